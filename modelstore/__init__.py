"""The model store: what a published model is and how it is read, checked and run.

The registry and the model card (:mod:`modelstore.registry`), the errors a card records
per band of problems (:mod:`modelstore.bands`), the ONNX runner (:mod:`modelstore.runner`)
and a model's error on a dataset (:mod:`modelstore.evaluate`). It stands on the physics
(``datagen``) and under its two users: ``training`` publishes models here, ``service``
serves them; neither imports the other.
"""
