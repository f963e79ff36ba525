"""Fast checks of one module each: models, pipeline pieces, optimizers, scaling fits, tools."""
