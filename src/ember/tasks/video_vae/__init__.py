"""Task video_vae (seed 000, Open-Sora-Plan's CausalVAE): a causal 3D video VAE with an optional
3D PatchGAN. keys.py: its config keys; data/sources/index/video_io/synth: videos in; model/blocks/
discriminator/ema/losses: the networks and losses; recon: reconstructions out; compile: mode 0."""
