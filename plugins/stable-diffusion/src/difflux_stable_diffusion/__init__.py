"""difflux plugin: Stable Diffusion 1.x/2.x and SDXL pipelines (txt2img, img2img, inpainting, ...)."""
