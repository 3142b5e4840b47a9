"""Fine-tuning a converted model: TSM (per-step factors) and QAT through the quantised twin."""
