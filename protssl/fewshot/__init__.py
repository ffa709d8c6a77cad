"""Few-shot function classifiers over protein embeddings: prototype, kNN, linear, contrastive and
hybrid (alignment of embedding-retrieved support where a hit is significant) heads.

A classifier is fitted on a handful of labelled vectors per layer, picks the layer whose held-out
support accuracy is best, calibrates its probabilities and sets abstention thresholds on held-out
scores, so that it says `unknown` (or backs off to a parent such as 1.1.1.-) instead of a confident
wrong label. One module per concept:

| module | what lives there |
|---|---|
| `config` | `FewShotConfig`, the heads on offer (`METHODS`) and what a fit may ask for (`CHOICES`) |
| `heads` | the scoring heads, their held-out scores and the trainer of the torch ones |
| `alignment` | `Aligner`: pyhmmer's phmmer of a query against chosen support sequences |
| `calibration` | temperature, abstention thresholds, extra labels, EC back-off levels |
| `classifier` | `FewShotClassifier` (fit, predict, state), `Prediction`, `require_labels` |
| `episodes` | N-way K-shot episodes and the part of a pool they use |
| `pipeline` | the classifier on a protssl model: `embed_for_fewshot`, `fit_records`, `classify_records` |
| `registry` | named, versioned classifiers in the store, and `ClassifierCache` |

The core (`heads` … `episodes`) knows nothing of models or SQL; `pipeline` ties it to a model and
`registry` to the store, which it reaches through a structural protocol.
"""

from protssl.fewshot.classifier import UNKNOWN, FewShotClassifier, Prediction, require_labels
from protssl.fewshot.config import CHOICES, METHODS, FewShotConfig
from protssl.fewshot.episodes import Episode, sample_episodes, subset_episodes
from protssl.fewshot.pipeline import (
    Runner,
    aligned_residues,
    candidate_layers,
    check_model,
    classifier_embed_config,
    classify_records,
    embed_for_fewshot,
    fit_records,
    fit_residues,
    progress_residues,
)
from protssl.fewshot.registry import (
    ClassifierCache,
    add_examples,
    load_classifier,
    save_classifier,
)

__all__ = [
    "CHOICES",
    "METHODS",
    "UNKNOWN",
    "ClassifierCache",
    "Episode",
    "FewShotClassifier",
    "FewShotConfig",
    "Prediction",
    "Runner",
    "add_examples",
    "aligned_residues",
    "candidate_layers",
    "check_model",
    "classifier_embed_config",
    "classify_records",
    "embed_for_fewshot",
    "fit_records",
    "fit_residues",
    "load_classifier",
    "progress_residues",
    "require_labels",
    "sample_episodes",
    "save_classifier",
    "subset_episodes",
]
