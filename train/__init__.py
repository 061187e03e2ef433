"""M³FT training module: data, stage 1, stage 2, evaluation, export, and diffusers-side tiny models."""
