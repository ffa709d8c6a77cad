"""What a model learned, measured three ways before anyone trains a classifier on it.

Self-supervised learning works for three reasons, and each has a view here: compression that
keeps structure (`information`: bits per residue saved against residue frequencies), similar
proteins close and the rest spread out (`geometry`: alignment, uniformity, effective rank,
neighbour purity), and few labels needed downstream (`efficiency`: few-shot learning curves beside
model-free baselines). `run` measures all three per layer and pooling and picks the best pair;
`report` writes them out (`protssl analyze`).

| module | what lives there |
|---|---|
| `config` | `AnalysisConfig` and the poolings compared (light: no torch) |
| `data` | the shared data or examples/, labelled sets sampled the same way every time |
| `information` | bits per residue of the model and of the unigram model |
| `geometry` | alignment, uniformity, RankMe, k-NN purity; two augmented views of a protein |
| `efficiency` | k-mer features, few-shot draws, learning curves |
| `run` | `analyze`: every view, every layer and pooling, the choice |
| `plots` | the report's figures |
| `report` | report.md, report.html, report.json, the headline and the card update |
"""
