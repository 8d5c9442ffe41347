import os

# Triton kernels run in the interpreter on CPU tensors unless a GPU is present. The variable must
# be set before any @triton.jit function is created, so it is set here, before test modules import.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib
import string

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


# --- text data and a tiny teacher (tests/data, tests/teacher, tests/distill, tests/pipeline) ---
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TFNS_TRAIN_SHA = "184e6322b7f0e84c3103a83d198f1be8203de8b63a857f67a2964321b71c4e8d"


@pytest.fixture(scope="session")
def tfns_dir(shared_data):
    d = shared_data / "tfns"
    if not (d / "sent_train.csv").exists():
        pytest.skip("TFNS not in shared data")
    return d


@pytest.fixture(scope="session")
def tfns_small(tfns_dir):
    """(train, valid): 600 / 200 stratified real TFNS tweets."""
    from edgekd.data import load_tfns

    tr = load_tfns("train", root=tfns_dir).stratified_sample(600, seed=1)
    va = load_tfns("validation", root=tfns_dir).stratified_sample(200, seed=1)
    return tr, va


def make_tiny_bert(path, texts, num_labels: int = 3, seed: int = 0, hidden: int = 16, layers: int = 2):
    """A random 2-layer BERT sequence classifier with a WordPiece vocabulary built from ``texts``
    (whole words seen twice or more, plus single characters and their ## forms), saved in ``path``."""
    import collections
    import re

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += sorted(w for w, c in words.items() if c >= 2 and len(w) > 1)
    path.mkdir(parents=True, exist_ok=True)
    wp = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    wp.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label={0: "bearish", 1: "bullish", 2: "neutral"},
        label2id={"bearish": 0, "bullish": 1, "neutral": 2},
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tfns_small):
    tr, _ = tfns_small
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tr.texts)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread (and far faster on a shared machine); a folder's
    conftest makes this autouse."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA
