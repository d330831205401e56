"""The job's report section (carbon intensity, prices, PUE, trackers), and the strict base every
section of the job spec shares. Part of :mod:`launcher.spec`, which re-exports both."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

Tracker = Literal["tensorboard", "mlflow", "wandb"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ReportSpec(Strict):
    country_iso_code: str = Field(
        "USA", min_length=3, max_length=3, description="Where the job runs, ISO 3166 alpha-3 (USA, FRA, DEU...): "
        "the grid's carbon intensity, from CodeCarbon's data.")
    region: Optional[str] = Field(
        None, description="Region within the country, for CodeCarbon's measured figures (the forecast uses the "
        "country's).")
    gpu_hour_price: Optional[float] = Field(
        None, ge=0, description="Price of one GPU-hour (device-hour on CPU); compute cost = device-hours x price.")
    node_hour_price: Optional[float] = Field(
        None, ge=0, description="Price of one node-hour, for nodes billed whole (used when gpu_hour_price is unset).")
    currency: str = Field("USD", description="Currency the prices are in, as printed.")
    energy_price_per_kwh: Optional[float] = Field(None, ge=0, description="Price of one kWh, added to compute cost.")
    pue: float = Field(
        1.0, ge=1.0, description="Data center's power usage effectiveness: energy figures are multiplied by it once.")
    offset_price_per_tonne: Optional[float] = Field(
        None, ge=0, description="Price of offsetting one tonne of CO2e (in report.currency): the plan's "
        "forecast.offset_cost, the report's offset_cost and a line in the model card.")
    intensity_forecast: Optional[str] = Field(
        None, description="CSV of hourly grid carbon intensity, columns timestamp,g_co2e_per_kwh (UTC; exported "
        "from Electricity Maps, WattTime or the UK Carbon Intensity API): launcher plan --start-window picks "
        "the start of least CO2, launcher slurm --carbon-aware writes it as #SBATCH --begin, and the report "
        "adds the CO2 of the hours the job ran.")
    trackers: list[Tracker] = Field(
        default_factory=list, description="Experiment trackers global rank 0 logs to: tensorboard (event files in "
        "the run directory), mlflow (MLFLOW_TRACKING_URI, else a SQLite store in the run directory), wandb (offline "
        "without WANDB_API_KEY). Per-step train metrics, eval, and the report's figures as the run's summary; one "
        "tracker run across resumes and restarts (its id is kept in the run directory).")

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("trackers")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        twice = sorted({t for t in v if v.count(t) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return v
