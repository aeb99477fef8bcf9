"""--threads and the automatic thread count of the inference commands (cli/threads.py)."""
import pytest
import torch

from cli.main import build_parser
from cli.threads import auto_threads, configure_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_uses_the_cores_other_jobs_leave_free():
    assert auto_threads(cores=2, load=0.1, default=2) == 2        # idle: torch's own choice
    assert auto_threads(cores=2, load=1.2, default=2) == 1        # one core taken
    assert auto_threads(cores=2, load=3.7, default=2) == 1        # overloaded: still one
    assert auto_threads(cores=16, load=4.4, default=8) == 8       # never above torch's default
    assert auto_threads(cores=16, load=10.6, default=16) == 5
    assert auto_threads(cores=4, load=None, default=4) == 4       # load unknown: torch's default


def test_an_explicit_choice_wins_and_the_environment_is_respected(keep_threads):
    assert configure_threads(1, env={}) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert configure_threads(None, env={"OMP_NUM_THREADS": "2"}) is None and torch.get_num_threads() == 2
    assert configure_threads(None, env={"MKL_NUM_THREADS": "3"}) is None
    n = configure_threads(None, env={})
    assert n is not None and 1 <= n <= 2 and torch.get_num_threads() == n


@pytest.mark.parametrize("argv", [["generate", "x"], ["edit", "in.png", "x"], ["eval"], ["serve"]])
def test_the_inference_commands_take_threads(argv):
    parser = build_parser()
    assert parser.parse_args(argv).threads is None
    assert parser.parse_args(argv + ["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--threads", "0"])
    assert not hasattr(parser.parse_args(["train", "--tokens", "a.tar", "--tokenizer", "t.json",
                                          "--vqvae", "v"]), "threads")
