"""The denoising schedulers a generation may use, by name: one table, read by the limits (which
names a request may ask for) and the pipeline (which diffusers class runs it).

A scheduler is a component beside the networks, as in diffusers: every one is built from the
saved model's own noise schedule (``scheduler/scheduler_config.json``, the betas the networks
were trained with), so switching scheduler changes how the reverse process is integrated, never
what the model learned. Importing this module imports no torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class and the settings that differ from the saved schedule's."""

    class_name: str
    overrides: dict = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerSpec] = {
    # The paper's sampler and the default: SD's own schedule ("leading" spacing, steps_offset 1).
    "ddim": SchedulerSpec("DDIMScheduler", {}),  # DDIM, first order
    # Second-order multistep solvers for few steps. "trailing" spacing starts at t = 999, where
    # the category's colour and layout are decided (the leading spacing skips the noisiest 10 %
    # of the schedule at 10 steps); diffusers recommends it for low step counts.
    "dpm++": SchedulerSpec("DPMSolverMultistepScheduler",  # DPM-Solver++ 2M
                           {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing"}),
    "unipc": SchedulerSpec("UniPCMultistepScheduler",  # UniPC, multistep predictor-corrector
                           {"solver_order": 2, "timestep_spacing": "trailing"}),
}
DEFAULT_SCHEDULER = "ddim"


def make_scheduler(name: str, saved_config):
    """A fresh scheduler ``name`` on the saved noise schedule (multistep schedulers keep state
    across steps, so every denoising loop gets its own)."""
    import inspect

    import diffusers

    spec = SCHEDULERS[name]
    cls = getattr(diffusers, spec.class_name)
    known = set(inspect.signature(cls.__init__).parameters)  # from_config warns about the others
    base = {k: v for k, v in dict(saved_config).items() if k in known}
    return cls.from_config({**base, **spec.overrides})
