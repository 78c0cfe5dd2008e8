"""The CLI's front door: --version and --help answer, through the real entry point."""

import subprocess
import sys

from typer.testing import CliRunner

from mfhelm import __version__
from mfhelm.cli import app


def test_version_flag_prints_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mfhelm {__version__}"
    assert __version__ != "0.0.0+unknown"


def test_help_lists_usage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout
    assert "--version" in result.stdout


def test_console_script_help_does_not_import_heavy_sdks():
    code = (
        "import sys\n"
        "sys.argv=['mfhelm','--help']\n"
        "from mfhelm.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in sys.modules if m.split('.')[0] in ('azure','kubernetes','pyhelm3')]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_unknown_option_is_one_line_error_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "mfhelm", "--no-such-flag"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "no-such-flag" in proc.stderr
