import pytest

from launcher.errors import JobError
from launcher.plan import lr_factor, plan_job, read_model_info, resolve_batch
from launcher.spec import build_job


@pytest.mark.parametrize(
    "micro,accum,glob,world,expect",
    [
        (4, None, 128, 16, (4, 2, 128)),
        (None, 2, 128, 16, (4, 2, 128)),
        (4, 2, None, 16, (4, 2, 128)),
        (4, 2, 128, 16, (4, 2, 128)),
        (None, None, 128, 16, (8, 1, 128)),
        (None, None, None, 3, (1, 1, 3)),
    ],
)
def test_any_two_determine_the_third(micro, accum, glob, world, expect):
    b = resolve_batch(micro, accum, glob, world)
    assert (b.micro_batch_size, b.grad_accum_steps, b.global_batch_size) == expect
    assert b.micro_batch_size * b.grad_accum_steps * world == b.global_batch_size


def test_non_dividing_batch_proposes_nearest_valid_values():
    with pytest.raises(JobError) as e:
        resolve_batch(4, None, 100, 16)
    msg = str(e.value)
    assert "train.global_batch_size: 100 is not divisible by micro_batch_size 4 x world_size 16 = 64" in msg
    assert "64 or 128" in msg


def test_inconsistent_triple_is_an_error():
    with pytest.raises(JobError, match="128 != micro_batch_size 4 x grad_accum_steps 4 x world_size 16 = 256"):
        resolve_batch(4, 4, 128, 16)


def test_plan_world_size_from_cluster_and_device():
    spec = build_job({"cluster": {"nodes": 2, "gpus_per_node": 8, "cpu_procs_per_node": 2},
                      "train": {"micro_batch_size": 4, "global_batch_size": 128}})
    gpu = plan_job(spec, device="cuda")
    assert (gpu.world_size, gpu.grad_accum_steps, gpu.backend) == (16, 2, "nccl")
    assert gpu.ds_config["train_batch_size"] == 128
    cpu = plan_job(spec, device="cpu", cpu_count=8)
    assert (cpu.world_size, cpu.grad_accum_steps, cpu.backend, cpu.threads_per_rank) == (4, 8, "gloo", 4)
    assert cpu.ds_config["optimizer"]["params"]["torch_adam"] is True


def test_steps_from_train_rows_and_max_steps():
    spec = build_job({"cluster": {"nodes": 1, "gpus_per_node": 2}, "train": {"micro_batch_size": 2,
                      "global_batch_size": 8, "epochs": 3}})
    p = plan_job(spec, device="cuda", train_rows=35)
    assert (p.steps_per_epoch, p.total_steps) == (4, 12)
    assert any("3 rows of the last partial batch unused" in d for d in p.derivations)
    p2 = plan_job(spec.model_copy(update={"train": spec.train.model_copy(update={"max_steps": 5})}),
                  device="cuda", train_rows=35)
    assert p2.total_steps == 5
    with pytest.raises(JobError, match="make no full global batch of 8"):
        plan_job(spec, device="cuda", train_rows=7)


def test_max_seq_len_over_model_limit():
    info = read_model_info({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
                            "num_attention_heads": 4, "max_position_embeddings": 512})
    spec = build_job({"data": {"max_seq_len": 1024}})
    with pytest.raises(JobError, match="data.max_seq_len: 1024 exceeds the model's limit"):
        plan_job(spec, model_info=info)


def test_param_count_matches_llama_3_2_1b_config():
    # meta-llama/Llama-3.2-1B config.json: 1,235,814,400 parameters (tied embeddings)
    cfg = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True}
    assert read_model_info(cfg).n_params == 1_235_814_400


def test_lr_schedule_warmup_then_cosine_to_min():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, "cosine", 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + __import__("math").cos(3.14159265 * 89 / 90)), rel=1e-6)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(50, total, 0, "constant", 0.0) == 1.0
    assert lr_factor(99, 100, 0, "linear", 0.0) == pytest.approx(0.01)


def test_fsdp_cpu_offload_needs_an_accelerator():
    spec = build_job({"parallel": {"strategy": "fsdp", "offload_params": "cpu"}})
    assert plan_job(spec, device="cuda").fsdp.cpu_offload is True
    with pytest.raises(JobError, match="FSDP2 offloads from an accelerator"):
        plan_job(spec, device="cpu")
