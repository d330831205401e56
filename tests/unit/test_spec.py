import pytest
from pydantic import ValidationError

from launcher.errors import JobError
from launcher.spec import apply_overrides, build_job, load_job


def write(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_resolve_and_are_frozen():
    spec = build_job({"name": "x"})
    assert spec.train.method == "lora" and spec.parallel.zero_stage == 3
    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "y"  # frozen


def test_unknown_key_suggests_closest_name(tmp_path):
    p = write(tmp_path, "train:\n  micro_batch_sise: 4\n")
    with pytest.raises(JobError) as e:
        load_job(p)
    assert "train.micro_batch_sise: unknown key; did you mean 'train.micro_batch_size'?" in str(e.value)


def test_all_errors_reported_at_once_with_paths(tmp_path):
    p = write(tmp_path, "train: {micro_batch_size: 0, lr: -1}\nparallel: {zero_stage: 5}\nmodle: {}\n")
    with pytest.raises(JobError) as e:
        load_job(p)
    lines = e.value.lines
    assert any("train.micro_batch_size: must be >= 1, got 0" in ln for ln in lines)
    assert any("train.lr: must be > 0" in ln for ln in lines)
    assert any("parallel.zero_stage: must be <= 3, got 5" in ln for ln in lines)
    assert any("modle: unknown key; did you mean 'model'?" in ln for ln in lines)
    assert len(lines) == 4
    assert all(ln.startswith(str(p)) for ln in lines)


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  lr: [1, 2\n  epochs: 1\n")
    with pytest.raises(JobError) as e:
        load_job(p)
    assert f"{p}:4:" in str(e.value) and "YAML syntax error" in str(e.value)


def test_cross_field_offload_rules():
    with pytest.raises(JobError, match="offload_params: 'cpu' needs zero_stage 3"):
        build_job({"parallel": {"zero_stage": 2, "offload_params": "cpu"}})
    with pytest.raises(JobError, match="nvme_path: required"):
        build_job({"parallel": {"zero_stage": 3, "offload_optimizer": "nvme"}})
    with pytest.raises(JobError, match="FSDP2 offloads"):
        build_job({"parallel": {"strategy": "fsdp", "offload_optimizer": "cpu"}})


def test_overrides_make_a_new_dict_and_parse_yaml_values(tmp_path):
    base = {"train": {"lr": 1.0}}
    out = apply_overrides(base, ["train.lr=3e-4", "train.lora.r=8", "cluster.nodes=4", "data.packing=false"])
    assert base == {"train": {"lr": 1.0}}
    assert out["train"]["lr"] == 3e-4 and out["train"]["lora"]["r"] == 8
    assert out["cluster"]["nodes"] == 4 and out["data"]["packing"] is False
    with pytest.raises(JobError, match="expected key.sub=value"):
        apply_overrides(base, ["train.lr"])


def test_override_with_wrong_type_names_the_field(tmp_path):
    p = write(tmp_path, "name: a\n")
    with pytest.raises(JobError, match=r"cluster.nodes: .*got 'two'"):
        load_job(p, ["cluster.nodes=two"])


def test_embedded_default_job_loads():
    spec = load_job(None)
    assert spec.model.path == "demo:tiny-llama" and spec.data.path == "demo:arithmetic"
