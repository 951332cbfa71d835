"""The `kzoo serve` command: bad arguments are one line and exit code 2; a served run folder
answers, and SIGTERM stops it with exit code 0."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from kzoo.cli.main import main
from tests.helpers import ROOT, one_error_line


@pytest.mark.parametrize("flags,words", [
    (["--port", "99999"], "--port 99999: must be in 0..65535"),
    (["--host", "0.0.0.0"], "--api-key"),
    (["--weights", "int4"], "--weights 'int4'"),
    (["--slots", "0"], "--slots 0"),
    (["--api-key", "a b"], "--api-key"),
    (["--timeout", "0"], "--timeout 0"),
])
def test_bad_arguments_are_one_line_and_exit_code_2(nano, capsys, flags, words):
    assert main(["serve", str(nano[2]), *flags]) == 2
    assert words in one_error_line(capsys)


def test_a_missing_model_and_an_unparsable_flag(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["serve", str(tmp_path), "--slots", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_the_command_serves_and_sigterm_exits_0(nano):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kzoo.cli.main", "serve", str(nano[2]), "--port", "0",
         "--slots", "2", "--model-name", "tiny"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once it listens
        assert "kzoo serve:" in line and "/v1" in line, process.stderr.read()
        url = line.split(" on ")[1].split()[0]
        request = urllib.request.Request(url + "/completions", data=json.dumps(
            {"model": "tiny", "prompt": "hi", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["choices"]) == 1
        # a stream under way when SIGTERM comes is finished (then the process exits 0)
        request = urllib.request.Request(url + "/completions", data=json.dumps(
            {"prompt": "go", "max_tokens": 100, "stream": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.readline().startswith(b"data: ")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest = response.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
        assert process.wait(30) == 0 and time.monotonic() - started < 30
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
