"""M3-JEPA: align frozen unimodal encoders with a multi-gate MoE predictor (Lei et al., ICML 2025)."""
