"""What a run prints as it trains: a progress bar on a terminal (a pseudo-terminal here), plain lines
elsewhere."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from tests.helpers import REPO


def _run(tmp_path, tty: bool) -> str:
    args = [sys.executable, "-m", "ray_al", "train", "train.trainer=al_local", "train.epochs=1",
            "train.log_every_s=0.01", "train.chunk_size=4", f"run_dir={tmp_path}", "checkpoint.enabled=false",
            "model.target_warmup_steps=0", "data.limit_train=320", "log.tensorboard=false"]
    if not tty:
        return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO).stdout
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, cwd=REPO)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_progress_bar_and_a_log_gets_lines(tmp_path):
    screen = _run(tmp_path / "tty", tty=True)
    assert "epoch 1/1:" in screen and "%|" in screen and "samples/s" in screen and "step/s" in screen
    assert "epoch 1/1 train" in screen  # the epoch's line after the bar
    log = _run(tmp_path / "log", tty=False)
    assert "%|" not in log and "\r" not in log
    assert "  epoch 1/1 step " in log and "epoch 1/1 train" in log
