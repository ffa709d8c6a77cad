"""A run as a model folder: the encoder's weights with a card whose `training` section tells the run."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from protssl.checkpoint import refuse_to_replace_a_model, save_model
from protssl.model import ProteinEncoder, resolve_dtype
from protssl.pretrain.config import PretrainConfig
from protssl.pretrain.data import TrainingCorpus, load_corpus, validation_batches
from protssl.pretrain.probe import FunctionProbe, unigram_perplexity, validation_loss
from protssl.pretrain.state import (
    CHECKPOINT_NAME,
    RunProgress,
    config_from_state,
    load_checkpoint,
    locate_inputs,
    progress_from_state,
)

__all__ = ["MODEL_SUBDIR", "export_checkpoint", "export_model", "probe_summary", "training_summary"]

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
"""Where a run that completes its schedule exports its model, inside the run folder."""


def training_summary(
    config: PretrainConfig,
    progress: RunProgress,
    *,
    corpus: TrainingCorpus,
    val_loss: float,
    unigram: float,
    val_batches: int,
    hardware: str | None,
    dtype: str | None,
) -> dict[str, Any]:
    """The `training` section of the model card."""
    return {
        "recipe": config.to_dict(),
        "command": progress.command,
        "steps": progress.step,
        "scheduled_steps": config.steps,
        "tokens_seen": progress.tokens_seen,
        "corpus_records": {
            "train": len(corpus.train),
            "val": len(corpus.val),
            **{f"skipped {why}": n for why, n in corpus.skipped.items()},
        },
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 3),
        "unigram_val_perplexity": round(unigram, 3),
        "val_split": f"{config.val_fraction:.0%} of records by blake2b(id); "
        f"first {config.val_max_records} held-out records in {val_batches} batches",
        "wall_time_s": round(progress.elapsed_s, 1),
        "torch": torch.__version__,
        "hardware": hardware,
        "dtype": dtype,
        "resume_commands": progress.resume_commands,
        "init_from": progress.init_from,
    }


def probe_summary(probe: FunctionProbe | None, scores: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card's `function_probe` entry (nothing without a probe)."""
    if probe is None or scores is None:
        return {}
    return {
        "function_probe": {
            "records": len(probe.sequences),
            "labels": len(set().union(*probe.labels)),
            **scores,
            "nn1_composition": probe.composition_nn1,
        }
    }


def export_model(
    encoder: ProteinEncoder, directory: Path, *, config: PretrainConfig, summary: dict[str, Any]
) -> None:
    """Write `encoder` as a protssl model folder named by the recipe, `summary` as its card's `training`."""
    save_model(
        encoder,
        directory,
        name=config.name,
        provenance={"source": f"protssl pretrain on {config.corpus.name}"},
        training=summary,
    )
    log.info("exported %s (val ppl %.2f)", directory, summary["val_perplexity"])


def export_checkpoint(
    run_dir: str | Path,
    directory: str | Path,
    *,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a run's last checkpoint (e.g. one stopped by SIGTERM) as a model folder with its card.

    Validation and the unigram baseline are recomputed on the checkpoint's held-out split; `extra`
    is merged into the card's `training` section. A folder holding a model is refused unless
    `overwrite`.
    """
    run_dir, directory = Path(run_dir), Path(directory)
    if not overwrite:
        refuse_to_replace_a_model(directory)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    config = locate_inputs(config_from_state(state), run_dir, needed=("corpus", "cluster_tsv"))
    encoder = ProteinEncoder(config.model_config)
    encoder.load_state_dict(state["model"])
    corpus = load_corpus(
        config.corpus, val_fraction=config.val_fraction, cluster_tsv=config.cluster_tsv
    )
    val_batches = validation_batches(corpus, config)
    dtype = resolve_dtype(config.dtype, torch.device("cpu"))
    summary = training_summary(
        config,
        progress_from_state(state),
        corpus=corpus,
        val_loss=validation_loss(
            encoder, val_batches, mask_prob=config.mask_prob, seed=config.seed, dtype=dtype
        ),
        unigram=unigram_perplexity(corpus.train, corpus.val),
        val_batches=len(val_batches),
        hardware=state.get("hardware"),
        dtype=state.get("dtype"),
    )
    export_model(encoder, directory, config=config, summary=summary | dict(extra or {}))
    return directory
