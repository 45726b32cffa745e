"""Numbers *reported* in the paper (Aiello, Valsesia, Magli 2024), for showing beside our measurements.

Never measured here: every table the notebooks print from this module is labelled "as reported".
``TABLES[n]`` is ``{"title": ..., "columns": [...], "rows": {method: [values, None where the paper has "-"]}}``.
"""
from __future__ import annotations

from .convert import FORMATS, unet_for
from .paper_models import PAPER_MODELS

_B4, _B3 = ["|T|=5", "|T|=10", "|T|=15", "|T|=20"], ["|T|=5", "|T|=10", "|T|=20"]

TABLES: dict[int, dict] = {
    1: {"title": "Table 1. CIFAR-10, Inception FID", "columns": _B4, "rows": {
        "DDPM": [76.3, 42.1, 31.4, 25.9],
        "DDIM": [32.7, 13.6, 9.31, 7.50],
        "DDIM + MMD-DDM (Inception-V3)": [5.48, 3.80, 4.11, 3.55],
        "DDIM + MMD-DDM (CLIP)": [6.79, 4.87, 4.79, 4.52],
        "GENIE": [13.9, 5.97, 4.49, 3.94],
        "PNDM": [35.9, 10.3, 6.61, 5.20],
        "FastDPM": [None, 9.90, None, 5.05],
        "Learned Sampler": [13.8, 8.22, 6.12, 4.72],
        "Analytic DDIM": [None, 14.7, 9.16, 7.20],
        "DPM-Solver (Type-1)": [None, 6.37, 3.78, 4.28],
        "DPM-Solver (Type-2)": [None, 10.2, 4.17, 3.72]}},
    2: {"title": "Table 2. CelebA 64x64, Inception FID", "columns": _B4, "rows": {
        "DDIM": [22.4, 17.3, 16.0, 13.7],
        "DDIM + MMD-DDM (Inception-V3)": [3.04, 2.58, 2.13, 2.24],
        "DDIM + MMD-DDM (CLIP)": [4.65, 3.90, 3.17, 3.27],
        "ES+StyleGAN2+DDIM": [9.15, 6.44, None, 4.90],
        "PNDM": [11.3, 7.71, None, 5.51],
        "FastDPM": [None, 15.3, None, 10.7],
        "Diffusion Autoencoder": [None, 12.9, None, 10.2],
        "Analytic DDPM": [None, 29.0, 21.8, 18.1],
        "Analytic DDIM": [None, 15.6, 12.3, 10.45],
        "DPM-Solver (Type-1)": [None, 6.92, 3.05, 2.82],
        "DPM-Solver (Type-2)": [None, 5.83, 3.11, 3.13]}},
    3: {"title": "Table 3. ImageNet 64x64, Inception FID", "columns": _B3, "rows": {
        "DDIM": [131.5, 35.2, 20.7],
        "DDIM + MMD-DDM (Inception-V3)": [33.1, 21.1, 12.4],
        "DDIM + MMD-DDM (CLIP)": [27.5, 16.4, 14.5],
        "Learned Sampler": [55.1, 37.2, 24.6],
        "Analytic-DDIM": [None, 70.6, 30.9],
        "Analytic-DDPM": [None, 60.6, 37.7],
        "DPM-Solver (Type-2)": [None, 24.4, 18.53]}},
    4: {"title": "Table 4. LSUN-Church 256x256, Inception FID", "columns": _B3, "rows": {
        "DDIM": [49.6, 19.4, 12.5],
        "DDIM + MMD-DDM (Inception-V3)": [4.75, 7.55, 6.21],
        "DDIM + MMD-DDM (CLIP)": [14.2, 10.7, 8.82],
        "S-PNDM": [20.5, 11.8, 9.20],
        "F-PNDM": [14.8, 8.69, 9.13]}},
    5: {"title": "Table 5. Optimise Inception, measure FID and FID_CLIP", "columns":
        ["FID |T|=5", "FID_CLIP |T|=5", "FID |T|=10", "FID_CLIP |T|=10"], "rows": {
        "CIFAR-10 DDIM": [32.7, 13.7, 13.6, 6.87],
        "CIFAR-10 DDIM + MMD-DDM (Inception-V3)": [5.48, 2.11, 3.80, 2.01],
        "CelebA DDIM": [22.4, 12.2, 17.3, 9.48],
        "CelebA DDIM + MMD-DDM (Inception-V3)": [3.04, 4.94, 2.58, 4.26],
        "ImageNet DDIM": [131.5, 29.5, 35.2, 11.9],
        "ImageNet DDIM + MMD-DDM (Inception-V3)": [33.1, 15.2, 21.1, 9.21]}},
    6: {"title": "Table 6. CIFAR-10, other metrics (OpenAI evaluator)", "columns": _B4, "rows": {
        "IS: DDIM": [6.95, 8.17, 8.43, 8.54],
        "IS: MMD-DDM (Inception-V3)": [9.39, 9.91, 9.85, 9.94],
        "IS: MMD-DDM (CLIP)": [9.10, 9.38, 9.52, 9.19],
        "Precision: DDIM": [0.51, 0.60, 0.61, 0.63],
        "Precision: MMD-DDM (Inception-V3)": [0.63, 0.65, 0.65, 0.67],
        "Precision: MMD-DDM (CLIP)": [0.65, 0.67, 0.67, 0.68],
        "Recall: DDIM": [0.31, 0.46, 0.50, 0.52],
        "Recall: MMD-DDM (Inception-V3)": [0.56, 0.59, 0.60, 0.58],
        "Recall: MMD-DDM (CLIP)": [0.53, 0.56, 0.57, 0.57]}},
    7: {"title": "Table 7. Kernel ablation, CIFAR-10 FID", "columns": _B3, "rows": {
        "Linear": [5.61, 4.69, 4.06], "Gaussian RBF": [5.89, 3.88, 3.61], "Cubic": [5.48, 3.80, 3.55]}},
    8: {"title": "Table 8. Timestep schedule ablation, CIFAR-10 FID", "columns": _B3, "rows": {
        "Linear": [5.48, 3.80, 3.55], "Quadratic": [5.19, 3.80, 3.67]}},
    9: {"title": "Table 9. Sampler ablation, CIFAR-10 FID", "columns": _B3, "rows": {
        "DDPM": [76.3, 42.1, 25.9], "DDIM": [32.7, 13.6, 7.50],
        "DDPM + MMD-DDM": [6.65, 5.19, 4.48], "DDIM + MMD-DDM": [5.48, 3.80, 3.55]}},
}
# Many-step FIDs the base models' own authors report, where quoted (as reported, never measured here).
BASE_FID = {"cifar10": "3.17 (DDPM, 1000 steps; Ho et al. 2020)", "church": "7.89 (DDPM, 1000 steps; Ho et al. 2020)"}

# Which table reports each dataset's main results (Tables 1-4).
DATASET_TABLE = {"cifar10": 1, "celeba64": 2, "imagenet64": 3, "church": 4}


def reported_table(number: int, budgets=None):
    """Table ``number`` of the paper as a pandas DataFrame, its caption marked "as reported in the paper";
    with ``budgets``, only the columns of those budgets (Tables 1-4, 7-9)."""
    import pandas as pd

    t = TABLES[number]
    df = pd.DataFrame.from_dict(t["rows"], orient="index", columns=t["columns"])
    if budgets is not None:
        df = df[[f"|T|={b}" for b in budgets if f"|T|={b}" in df.columns]]
    df.attrs["caption"] = f"{t['title']} (as reported in the paper, not measured here)"
    return df


def paper_models_table():
    """The paper's base models (``PAPER_MODELS``) as a pandas DataFrame: where each comes from, its weights,
    its parameters (counted on its authors' architecture, built empty), its schedule, and the FIDs reported
    for it (the MMD-DDM paper's DDIM rows; a many-step FID where its authors' paper is quoted in
    ``reported.BASE_FID``)."""
    import pandas as pd
    import torch

    rows = {}
    for name, ck in PAPER_MODELS.items():
        f = FORMATS[ck.format]
        with torch.device("meta"):
            unet = unet_for(ck.format, ck.size, 3, dropout=ck.dropout, **ck.arch)
        table = TABLES[DATASET_TABLE[name]]
        ddim = dict(zip(table["columns"], table["rows"]["DDIM"]))
        rows[name] = {
            "source": ck.source, "weights": "EMA" if ck.ema else "not EMA", "format": ck.format,
            "image size": ck.size, "parameters (M)": f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}",
            "schedule": f"{f.schedule}, T = {f.T}" + (", network fed t·1000/T" if ck.format != "ddpm" else ""),
            "MD5 published": "yes" if ck.md5 else "no",
            "DDIM FID, 5 / 10 / 20 steps (reported, MMD-DDM paper)": " / ".join(
                f"{ddim[f'|T|={b}']}" for b in (5, 10, 20)),
            "many-step FID (reported)": BASE_FID.get(name, "not quoted here")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("name")
