"""The paper's numbers as reported, and the table of its four base models."""
import numpy as np


def test_reported_tables_are_well_formed_and_hold_the_papers_numbers():
    from mmdlib.reported import TABLES, reported_table

    for t in TABLES.values():
        assert all(len(v) == len(t["columns"]) for v in t["rows"].values())
    t1 = reported_table(1)
    assert t1.loc["DDIM", "|T|=5"] == 32.7 and t1.loc["DDIM + MMD-DDM (Inception-V3)", "|T|=5"] == 5.48
    assert np.isnan(t1.loc["FastDPM", "|T|=5"]) and "as reported in the paper" in t1.attrs["caption"]
    assert reported_table(9).loc["DDPM + MMD-DDM", "|T|=20"] == 4.48


def test_the_paper_models_table_counts_parameters_on_each_authors_architecture():
    from mmdlib.reported import paper_models_table

    t = paper_models_table()
    assert list(t.index) == ["cifar10", "church", "celeba64", "imagenet64"]
    assert t.loc["cifar10", "parameters (M)"] == "35.7"  # DDPM's CIFAR-10 model (Ho et al. 2020)
    assert t.loc["cifar10", "DDIM FID, 5 / 10 / 20 steps (reported, MMD-DDM paper)"] == "32.7 / 13.6 / 7.5"
    assert t.loc["imagenet64", "schedule"] == "cosine, T = 4000, network fed t·1000/T"

