"""LightningModules: diffusion, regression, GAN and residual models, and EMA."""
