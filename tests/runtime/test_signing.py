"""Optional ed25519 signatures: trusted_keys refuses unsigned, wrongly signed and re-digested bundles."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("cryptography")  # extra edgekd[sign]; installed with edgekd[dev]

from edgekd.cli import main  # noqa: E402
from edgekd.errors import BundleError  # noqa: E402
from edgekd.runtime import Bundle  # noqa: E402
from edgekd.runtime.signing import generate_key, load_public_key, sign_bundle, verify_bundle  # noqa: E402
from hostile import manifest, save  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_key(d / "good"), generate_key(d / "other")


@pytest.mark.parametrize("as_zip", [False, True])
def test_sign_and_load(student_bundle, tmp_path, keys, as_zip):
    (priv, pub), (_, other_pub) = keys
    if as_zip:
        b = tmp_path / "s.zip"
        shutil.copy(student_bundle.with_suffix(".zip"), b)
    else:
        b = tmp_path / "s"
        shutil.copytree(student_bundle, b)
    with pytest.raises(BundleError, match="not signed"):
        Bundle.load(b, trusted_keys=[pub])
    sign_bundle(b, priv)
    assert Bundle.load(b, trusted_keys=[pub]).predict("oil").labels
    assert Bundle.load(b, trusted_keys=[other_pub, pub.read_bytes()]).label_names  # any trusted key
    assert Bundle.load(b).label_names  # no trusted_keys: the signature is not required
    with pytest.raises(BundleError, match="does not verify with any trusted key"):
        Bundle.load(b, trusted_keys=[other_pub])
    with pytest.raises(BundleError, match="empty list"):
        Bundle.load(b, trusted_keys=[])
    assert verify_bundle(b, trusted_keys=[pub])["signed"]


def test_forged_manifest_with_new_digest_is_refused(student_bundle, tmp_path, keys):
    (priv, pub), _ = keys
    d = tmp_path / "s"
    shutil.copytree(student_bundle, d)
    sign_bundle(d, priv)
    m = manifest(d)
    m["label_names"][0], m["label_names"][1] = m["label_names"][1], m["label_names"][0]
    save(d, m)  # a matching manifest.sha256: the digest check passes, the signature does not
    assert Bundle.load(d).label_names[0] == m["label_names"][0]
    with pytest.raises(BundleError, match="does not verify"):
        Bundle.load(d, trusted_keys=[pub])


def test_raw_key_bytes_and_bad_sig_file(student_bundle, tmp_path, keys):
    (priv, pub), _ = keys
    raw = load_public_key(pub)
    from cryptography.hazmat.primitives import serialization

    raw32 = raw.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    d = tmp_path / "s"
    shutil.copytree(student_bundle, d)
    sign_bundle(d, priv)
    assert Bundle.load(d, trusted_keys=[raw32]).label_names
    (d / "manifest.sig").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.sig is malformed"):
        Bundle.load(d, trusted_keys=[raw32])


def test_cli_sign_verify(student_bundle, tmp_path, capsys):
    z = tmp_path / "s.zip"
    shutil.copy(student_bundle.with_suffix(".zip"), z)
    assert main(["sign", "--generate-key", str(tmp_path / "k")]) == 0
    assert main(["sign", str(z), "--key", str(tmp_path / "k")]) == 0
    assert main(["verify", str(z), "--trusted-key", str(tmp_path / "k.pub")]) == 0
    assert "signature verified" in capsys.readouterr().out
    assert main(["predict", str(z), "--trusted-key", str(tmp_path / "k.pub"), "oil"]) == 0
