"""Self-supervised pretraining of the ESM-2 encoder on FASTA corpora, resumable and DDP-ready:
masked-residue (MLM), contrastive (NT-Xent between views and cluster members), or both.

Recipe (ESM-2's): 15% of residues are selected; of those 80% become `<mask>`, 10% a random residue
and 10% stay; the loss is cross-entropy on the selected positions only. Sequences longer than the
crop are cut at a random offset each time they are drawn. Crops are packed into token-budget
batches (`protssl.batching`), gradients accumulate to a target number of tokens per optimizer step,
and AdamW (betas 0.9/0.98, weight decay 0.01) follows warmup then linear or cosine decay.

Everything random is derived from the seed and the position in the run (step, micro-batch,
data pool), so a run resumed from a checkpoint follows exactly the loss curve of an uninterrupted
one. Under `torchrun` the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPUs);
each rank takes a disjoint share of the micro-batches and only rank 0 writes files.

The modules, in the order a run meets them: `config` (the recipe), `data` (split, clusters,
crops, the batch stream), `objective` (masking, loss, schedule), `contrastive` (pairs, views,
projection head, NT-Xent; `--objective`), `probe` (validation, layer
embeddings, the function probe; what benchmarks use), `state` (checkpoints, resume), `logs` (CSV,
TensorBoard, the plot), `loop` (the training loop), `export` (a run as a model folder);
`lease` (a run sized to a time budget: calibrate, plan, train with a deadline, export);
`python -m protssl.pretrain` (what `torchrun` launches) is `__main__`.
"""

from protssl.pretrain.config import PretrainConfig
from protssl.pretrain.data import (
    DataPosition,
    TrainingCorpus,
    crop_sequence,
    is_validation_id,
    load_corpus,
)
from protssl.pretrain.export import export_checkpoint
from protssl.pretrain.logs import LOG_NAME, PLOT_NAME, plot_run
from protssl.pretrain.loop import PretrainResult, pretrain
from protssl.pretrain.objective import learning_rate, mask_tokens, mlm_loss_sum
from protssl.pretrain.probe import (
    FunctionProbe,
    layer_embeddings,
    masked_lm_loss,
    unigram_perplexity,
)
from protssl.pretrain.state import (
    CHECKPOINT_NAME,
    config_from_checkpoint,
    initial_encoder,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PLOT_NAME",
    "DataPosition",
    "FunctionProbe",
    "PretrainConfig",
    "PretrainResult",
    "TrainingCorpus",
    "config_from_checkpoint",
    "crop_sequence",
    "export_checkpoint",
    "initial_encoder",
    "is_validation_id",
    "layer_embeddings",
    "learning_rate",
    "load_checkpoint",
    "load_corpus",
    "mask_tokens",
    "masked_lm_loss",
    "mlm_loss_sum",
    "plot_run",
    "pretrain",
    "save_checkpoint",
    "unigram_perplexity",
]
