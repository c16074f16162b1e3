"""File and folder identities."""

from harness.store.hashing import sha256_bytes, sha256_file, sha256_tree


def test_a_rewritten_file_is_hashed_again(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"first")
    assert sha256_file(f) == sha256_bytes(b"first") == sha256_file(f)
    f.write_bytes(b"second, longer")
    assert sha256_file(f) == sha256_bytes(b"second, longer")


def test_tree_hash_depends_on_names_and_contents_hidden_files_included(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    h = sha256_tree(tmp_path)
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert sha256_tree(tmp_path) != h
    h = sha256_tree(tmp_path)
    (tmp_path / "a" / ".shard.safetensors").write_text("loaders read hidden files too")
    assert sha256_tree(tmp_path) != h
