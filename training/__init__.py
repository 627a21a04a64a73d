"""Learning layer: the FNO, its inputs and normalisation, the data pipeline and the trainer."""
