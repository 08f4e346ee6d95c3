"""t2w_jax.diffusion: noise schedules, the x0-prediction loss and samplers under lax.scan."""
from t2w_jax.diffusion.losses import snr
from t2w_jax.diffusion.losses import x0_loss
from t2w_jax.diffusion.samplers import DDIMSampler
from t2w_jax.diffusion.samplers import DDPMSampler
from t2w_jax.diffusion.samplers import ReverseSampler
from t2w_jax.diffusion.samplers import denoise_from
from t2w_jax.diffusion.samplers import get_sampler
from t2w_jax.diffusion.samplers import guided_x0
from t2w_jax.diffusion.schedules import Schedule
from t2w_jax.diffusion.schedules import cosine_schedule
from t2w_jax.diffusion.schedules import eps_from_x0
from t2w_jax.diffusion.schedules import extract
from t2w_jax.diffusion.schedules import get_schedule
from t2w_jax.diffusion.schedules import linear_schedule
from t2w_jax.diffusion.schedules import q_sample

__all__ = [
    "DDIMSampler", "DDPMSampler", "ReverseSampler", "Schedule", "cosine_schedule",
    "denoise_from", "eps_from_x0", "extract", "get_sampler", "get_schedule", "guided_x0",
    "linear_schedule", "q_sample", "snr", "x0_loss",
]
