"""Model components of msGFM: the MoE MLP, the Swin encoder, decoders and heads."""
