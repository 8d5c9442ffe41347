"""Legal question answering (Ace-Attorney, Italiani et al. 2025), reconstructed from the paper's abstract.

A frozen LLM (local or behind an OpenAI-compatible endpoint) generates (context, question, answer)
triplets from short legal paragraphs; filters keep the grounded, specific ones; a small generative
student (pruned from the teacher, :mod:`edgekd.llm`) learns them by SFT or token-level KD; at
inference the Selective Generative Paradigm (SGP) lets the retriever and the generator pick the
paragraph to answer from.

- :mod:`edgekd.qa.types` / :mod:`edgekd.qa.data`: triplets, paragraphs, PolicyQA (SQuAD format).
- :mod:`edgekd.runtime.retrieval` (torch-free, also on the device): BM25 / dense / hybrid paragraph
  indexes; :mod:`edgekd.qa.embedder` exports the MiniLM sentence embedder the dense side runs in ONNX.
- :mod:`edgekd.qa.sgp`: the Selective Generative Paradigm (reconstructed) and the comparison modes
  (closed-book, top1, oracle, sgp); :mod:`edgekd.qa.metrics`: SQuAD EM/F1, ROUGE-L, top-k/MRR.
- :mod:`edgekd.qa.cli_eval`: ``edgekd qa index | evaluate | answer``.
"""
