import subprocess
import sys

from kq.cli import main


def test_config_check_ok(capsys):
    assert main(["config", "check", "configs/default.toml"]) == 0
    assert "ok" in capsys.readouterr().out


def test_bad_config_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk]\nmax_positions = 0\n")
    r = subprocess.run([sys.executable, "-m", "kq", "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "risk.max_positions" in r.stderr


def test_usage_errors_are_one_clean_message_not_a_traceback():
    r = subprocess.run(
        [sys.executable, "-m", "kq", "config", "check", "--no-such-option"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "no-such-option" in r.stderr


def test_no_arguments_prints_help():
    r = subprocess.run([sys.executable, "-m", "kq"], capture_output=True, text=True)
    assert "Traceback" not in r.stderr
    assert "Usage" in r.stdout + r.stderr
