"""Legal question answering (Ace-Attorney, Italiani et al. 2025), reconstructed from the paper's abstract.

A frozen LLM (local or behind an OpenAI-compatible endpoint) generates (context, question, answer)
triplets from short legal paragraphs; filters keep the grounded, specific ones; a small generative
student (pruned from the teacher, :mod:`edgekd.llm`) learns them by SFT or token-level KD; at
inference the Selective Generative Paradigm (SGP) lets the retriever and the generator pick the
paragraph to answer from.

- :mod:`edgekd.qa.types` / :mod:`edgekd.qa.data`: triplets, paragraphs, PolicyQA (SQuAD format).
- :mod:`edgekd.qa.generators`: generator backends (local causal LM; OpenAI-compatible endpoints);
  :mod:`edgekd.qa.synth`: synthetic triplets (templates, parsing, filters, cache, dataset output);
  :mod:`edgekd.qa.cli`: ``edgekd qa`` and ``qa generate``.
- :mod:`edgekd.runtime.retrieval` (torch-free, also on the device): BM25 / dense / hybrid paragraph
  indexes; :mod:`edgekd.qa.embedder` exports the MiniLM sentence embedder the dense side runs in ONNX.
- :mod:`edgekd.qa.sgp`: the Selective Generative Paradigm (reconstructed) and the comparison modes
  (closed-book, top1, oracle, sgp); :mod:`edgekd.qa.metrics`: SQuAD EM/F1, ROUGE-L, top-k/MRR.
- :mod:`edgekd.qa.cli_eval`: ``edgekd qa index | evaluate | answer``.
- :mod:`edgekd.qa.students`: the generative student (QA prompt, block-influence pruning of the
  teacher, SFT or token-level KD with a dev split, batched greedy answers).
- :mod:`edgekd.qa.reader`: the extractive baseline (MiniLM + span head, doc-stride windows).
- :mod:`edgekd.qa.cli_train`: ``edgekd qa train`` (``register_qa``).
"""
