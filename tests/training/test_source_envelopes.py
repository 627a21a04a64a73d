"""Export records the training sources' statistics from the lineage (issue 38): the
paper's law for datagen specs, the files' own sources for files, nothing where a file is
gone (or the lineage names no data: the service then checks no source)."""

import numpy as np

from datagen.dataset import open_dataset
from datagen.pipeline import write_split
from datagen.spec import SplitSpec
from modelstore.registry import BUNDLED_REGISTRY, Registry
from modelstore.sources import law_envelope, source_envelope
from training.export import with_source_envelopes

N = 32


def card_with(lineage: dict):
    card = Registry(BUNDLED_REGISTRY).card("default")
    bare = {k: v.model_copy(update={"source": None}) for k, v in card.envelope.items()}
    return card.model_copy(update={"envelope": bare, "resolution": N, "lineage": lineage})


def test_specs_give_the_law_and_files_their_own_sources(tmp_path):
    path = tmp_path / "helmholtz.h5"
    spec = SplitSpec(system="helmholtz", n_examples=16, split="train", resolution=N, seed=3)
    write_split(spec, path, progress=False)
    lineage = {
        "train": [
            {"generate": {"system": "poisson", "n_examples": 64, "resolution": N}},
            {"files": [str(path)]},
        ]
    }
    card = with_source_envelopes(card_with(lineage))
    poisson, helmholtz = card.envelope["poisson"].source, card.envelope["helmholtz"].source
    assert poisson == law_envelope("poisson", N) and poisson.origin == "law"
    with open_dataset(path) as reader:
        sources = np.asarray(reader.fields[:, 0], dtype=np.float64)
    assert helmholtz == source_envelope(sources, "observed") and helmholtz.n_examples == 16
    assert helmholtz.peak[1] <= 1.0 + 1e-6  # datagen's sources peak at 1
    assert card.envelope["advection_diffusion"].source is None  # not trained on here


def test_without_readable_training_data_the_card_records_no_sources(tmp_path):
    gone = card_with({"train": [{"generate": {"system": "poisson"}}, {"files": ["/nope.h5"]}]})
    assert all(env.source is None for env in with_source_envelopes(gone).envelope.values())
    untold = card_with({})
    assert with_source_envelopes(untold) == untold
