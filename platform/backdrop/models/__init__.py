"""The networks: tiny SD-inpainting preset, tokenizer, mask-guided attention, CG/PG, the generator container.

torch, diffusers and transformers only: no Ray, no MLflow, no HTTP.
"""
