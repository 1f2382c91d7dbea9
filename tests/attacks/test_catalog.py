"""The attacks plugin registers corruptions from a torch-free catalog (so listing plugins is
fast); the catalog must name exactly the corruptions that exist, with their summaries."""

from robench_attacks import catalog, corruptions


def test_the_catalog_matches_the_corruptions():
    assert [(c.name, c.__name__, c.summary) for c in corruptions.CORRUPTIONS] == [
        tuple(entry) for entry in catalog.CORRUPTIONS]
