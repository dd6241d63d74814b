"""nox sessions that mirror the README: tests, claims at each scale, report, lint."""

import nox

nox.options.sessions = ["lint", "tests", "claims"]
nox.options.reuse_existing_virtualenvs = True

CPU_TORCH = "torch==2.13.0"  # the local CPU build; an unpinned torch would pull CUDA wheels


def _install_cpu(session: nox.Session) -> None:
    session.install(CPU_TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The library's own tests (CPU, a few minutes)."""
    _install_cpu(session)
    session.run("python", "-m", "pytest", "tests", "-n", "2", "-q", *session.posargs)


@nox.session
def claims(session: nox.Session) -> None:
    """The paper's claims at smoke scale on the embedded digits data (CPU, minutes)."""
    _install_cpu(session)
    session.run("python", "-m", "pytest", "claims/", "--scale", "smoke", *session.posargs, success_codes=[0, 1])


def _install_gpu(session: nox.Session) -> None:
    # GPU machines bring their own CUDA torch; reuse it through the system site-packages.
    session.install("-e", ".[test]")


@nox.session(venv_params=["--system-site-packages"])
def claims_small(session: nox.Session) -> None:
    """CIFAR-10 ResNet-20 with a shortened schedule (GPU; needs --data-root or LTH_CHECKS_DATA_ROOT)."""
    _install_gpu(session)
    session.run("python", "-m", "pytest", "claims/", "--scale", "small", *session.posargs, success_codes=[0, 1])


@nox.session(venv_params=["--system-site-packages"])
def claims_paper(session: nox.Session) -> None:
    """The paper-scale recipe, 3 replicates (GPU hours)."""
    _install_gpu(session)
    session.run("python", "-m", "pytest", "claims/", "--scale", "paper", *session.posargs, success_codes=[0, 1])


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild the claims report from the cache without training (pass --scale etc. after --)."""
    _install_cpu(session)
    session.run("lth-checks", "report", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the library, claims, tests and this file."""
    session.install("ruff")
    session.run("ruff", "check", "lth_checks", "claims", "tests", "noxfile.py")
