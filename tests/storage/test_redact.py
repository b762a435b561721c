"""The one credential rule (:mod:`annotator.storage.redact`): moved into storage
options, or refused; every secret met is masked in every rendered text."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from annotator.config import ConfigError
from annotator.storage import redact as R


def test_take_credentials_moves_them_per_scheme():
    assert R.take_credentials("s3://AK:SE/CRET@bucket/k", {}, "--source") == (
        "s3://bucket/k", {"key": "AK", "secret": "SE/CRET"})
    clean, opts = R.take_credentials("https://user:pw1234@host/x", {"client_kwargs": {"timeout": 3}})
    assert clean == "https://host/x"
    assert opts["client_kwargs"]["timeout"] == 3 and opts["client_kwargs"]["headers"]["Authorization"].startswith(
        "Basic ")
    assert R.take_credentials("sftp://me:pw1234@host/x", None) == ("sftp://host/x",
                                                                   {"username": "me", "password": "pw1234"})
    assert R.take_credentials("/local/path", {"a": 1}) == ("/local/path", {"a": 1})
    assert R.take_credentials(None, None) == (None, {})


def test_the_same_credentials_twice_are_one_set_and_two_sets_are_refused():
    _, opts = R.take_credentials("s3://AK:SECRETXYZ@a/k", {})
    assert R.take_credentials("s3://AK:SECRETXYZ@b/k", opts)[1] == opts
    with pytest.raises(ConfigError, match="expected one set of credentials") as e:
        R.take_credentials("s3://AK:OTHERSECRET@b/k", opts, "--output")
    assert "OTHERSECRET" not in str(e.value) and "--output s3://b/k" in str(e.value)


@pytest.mark.parametrize("url", ["gs://AK:SECRETYYY@b/k", "file://AK:SECRETYYY@/tmp/x", "memory://AK:SECRETYYY@x"])
def test_credentials_a_scheme_cannot_take_are_refused_redacted(url):
    with pytest.raises(ConfigError, match="expected credentials in --storage-options") as e:
        R.take_credentials(url, {}, "--gt")
    assert "SECRETYYY" not in str(e.value) and "AK:" not in str(e.value)


def test_refuse_credentials_redacts_and_remembers_the_secret():
    R.refuse_credentials("/a/local/file", "--vocab")
    R.refuse_credentials(None, "--vocab")
    with pytest.raises(ConfigError, match=r"--vocab https://host/v.txt: expected no credentials") as e:
        R.refuse_credentials("https://someone:REFUSEDSECRET@host/v.txt", "--vocab")
    assert "REFUSEDSECRET" not in str(e.value)
    assert R.redact_text("a client quoting REFUSEDSECRET alone") == "a client quoting *** alone"


def test_redact_text_removes_userinfo_with_and_without_its_scheme():
    assert R.redact_text("s3://K:S@bucket/x") == "s3://bucket/x"
    assert R.redact_text('Invalid bucket name "KEYQ:SECQ@bucket"') == 'Invalid bucket name "bucket"'
    assert R.redact_text("(KEYQ:SECQ@host:9000)") == "(host:9000)"
    assert R.redact_text("mail me@example.com at 10:30") == "mail me@example.com at 10:30"


def test_storage_options_secrets_are_registered():
    R.register_options_secrets({"key": "OPTKEY123", "client_kwargs": {"headers": {"Authorization": "Bearer TOKEN999X"}},
                                "endpoint_url": "http://x"})
    assert R.redact_text("OPTKEY123 TOKEN999X http://x") == "*** *** http://x"
    R.register_secret("abcdefg")  # too short (< 8) to be told from ordinary words: not registered
    assert R.redact_text("abcdefg") == "abcdefg"


def test_take_arg_credentials_rewrites_a_parsed_command_line():
    args = argparse.Namespace(output="s3://AK:ARGSECRET@b/run", to="/local/to", push="http://u:PUSHSECRET@ls:8080",
                              api_key="TOKEN12345", storage_options='{"client_kwargs": {"endpoint_url": "http://e"}}')
    with pytest.raises(ConfigError, match="--push http://ls:8080"):
        R.take_arg_credentials(args, move=("output", "to"), refuse=("push",), secrets=("api_key",))
    assert R.redact_text("TOKEN12345 PUSHSECRET") == "*** ***"
    args.push = None
    R.take_arg_credentials(args, move=("output", "to"), refuse=("push",))
    assert args.output == "s3://b/run" and args.to == "/local/to"
    assert json.loads(args.storage_options) == {"client_kwargs": {"endpoint_url": "http://e"}, "key": "AK",
                                                "secret": "ARGSECRET"}


def test_log_records_and_warnings_pass_through_the_redaction(capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        R.install_log_redaction()
        R.install_log_redaction()  # idempotent
        assert sum(isinstance(f, R._RedactingFilter) for f in handler.filters) == 1
        R.register_secret("LOGSECRET1")
        logging.getLogger("annotator.test").warning("reading %s failed: %s", "s3://K:LOGSECRET1@b/x", "LOGSECRET1")
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert "reading s3://b/x failed: ***" in err and "LOGSECRET1" not in err
