"""The warm worker: on a local run, model jobs skip the import start-up by running in a fork of one process
that has imported torch, transformers and peft once.

A model job of the demo spends about 4 s before its work: torch's import (1.1 s), transformers' (about 1 s)
and the imports behind the first `from_pretrained` (1.2-1.6 s). With `EMLAB_WARM_WORKER=1` (`make run` sets
it), `run_script` hands a model job to the worker instead:

- the job's own process (the client) connects to the worker's Unix socket and sends the path of Snakemake's
  generated script, its working folder, its environment and its stdin/stdout/stderr (as file descriptors);
- the worker forks; the child takes the job's descriptors, folder and environment and runs that same script
  file, so the job reads the same `snakemake` object and runs the same `main`, with the job's log and
  threads set by `run_script` as in a process of its own;
- the worker reports the child's exit status to the client, which exits with it. If the client goes away
  (Snakemake stopped it), the worker stops the child's process group.

The worker only imports: it computes nothing, so no thread pool (OpenMP, CUDA) exists when it forks, and a
child starts as a fresh process would after its imports. One worker serves one (Python, emlab source,
import-time environment) combination: an edited emlab file, another venv or a changed thread variable get a
new worker, never a stale one. It exits after `IDLE_SECONDS` without a job.

Anything that keeps the worker from taking a job (no Linux, a socket folder another user could write to, a
worker that fails to start) runs the job in its own process as before, with one line on stderr saying why.
On a machine with an NVIDIA GPU visible every job starts anew too: whether CUDA works in a child forked after
these imports has not been checked, and there a job's start-up is small beside its work.
Torch-free jobs (`run_script(uses_torch=False)`) never use it: their import guard needs a fresh process.

`python -m emlab.model.worker --stop` stops this user's workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SWITCH = "EMLAB_WARM_WORKER"  # "1": model jobs of this run go to the warm worker
IN_CHILD = "EMLAB_WORKER_CHILD"  # set in a job the worker runs, so that it does not hand itself off again
DIR_ENV = "EMLAB_WORKER_DIR"  # the sockets' folder (default: a private folder under the temp folder)
IDLE_ENV = "EMLAB_WORKER_IDLE"  # seconds without a job before the worker exits
IDLE_SECONDS = 120
START_TIMEOUT = 120.0
# Variables read when torch, transformers or the math libraries are imported: a worker imported them under its
# own environment, so a job whose values differ needs another worker.
IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA", "PYTORCH", "TORCH", "HF_", "TRANSFORMERS_",
                   "TOKENIZERS_", "PYTHON", "LD_", "ATEN_", "NUMEXPR_")  # fmt: skip
# What a model job imports before its work (a first from_pretrained included); an absent one is skipped.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "tqdm",
    "torch",
    "safetensors.torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.generation.utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.tokenization_utils_fast",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.gemma2.modeling_gemma2",
    "transformers.models.mistral.modeling_mistral",
    "peft",
    "snakemake.script",
    "snakemake.logging",
    "snakemake.iocontainers",
    "emlab.model.loading",
    "emlab.model.hooks",
    "emlab.em.generation",
    "emlab.em.finetune",
    "emlab.em.activations",
    "emlab.em.judging.hf_backend",
    "emlab.interventions.generate",
    "emlab.lora.scalars",
    "emlab.monitor.traits",
    "emlab.monitor.drift",
)
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")
ACCEPTED = b"A"


class WorkerUnavailable(Exception):
    """The worker cannot take this job; it runs in its own process instead."""


def hand_off(snakemake) -> int | None:
    """Run this Snakemake script job in the warm worker and return its exit status; None: run it here.

    Only a job started by Snakemake's `script:` directive (whose generated file is `__real_file__` of
    `__main__`), with `EMLAB_WARM_WORKER=1`, on Linux, goes to the worker.
    """
    if os.environ.get(SWITCH) != "1" or os.environ.get(IN_CHILD) or sys.platform != "linux":
        return None
    if os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        return None  # a machine with a GPU: CUDA in forked children is not proven here, so each job starts anew
    main = sys.modules.get("__main__")
    script = getattr(main, "__real_file__", None)
    if getattr(main, "snakemake", None) is not snakemake or not script or not os.path.isfile(script):
        return None
    for _attempt in (1, 2):  # a worker that was just exiting (idle) takes no job: start another once
        try:
            return _submit(script)
        except (WorkerUnavailable, OSError) as exc:
            reason = exc
    print(f"emlab warm worker: not used ({reason}); this job runs in its own process", file=sys.stderr)
    return None


def worker_dir() -> Path:
    """The private folder of this user's worker sockets; WorkerUnavailable if others could write to it."""
    base = os.environ.get(DIR_ENV) or os.path.join(tempfile.gettempdir(), f"emlab-worker-{os.getuid()}")
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerUnavailable(f"{path} is not private to this user (mode {oct(st.st_mode & 0o777)})")
    return path


def worker_key() -> str:
    """What a worker's imports depend on: the interpreter, emlab's source files (path, size, mtime), the
    installed packages (site-packages' own mtime changes when one is added or removed) and the import-time
    environment variables."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    digest.update(f"{sys.executable}\0{package}\0".encode())
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".json", ".yaml"):
            st = path.stat()
            digest.update(f"{path.relative_to(package)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for name in ("purelib", "platlib"):
        site = sysconfig.get_paths().get(name)
        if site and os.path.isdir(site):
            digest.update(f"{site}\0{os.stat(site).st_mtime_ns}\0".encode())
    for name in sorted(os.environ):
        if name.startswith(IMPORT_TIME_ENV):
            digest.update(f"{name}={os.environ[name]}\0".encode())
    return digest.hexdigest()[:24]


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _start(path: Path) -> socket.socket:
    """Start a worker listening at `path` (its imports take a few seconds) and connect to it."""
    log = path.with_suffix(".log")
    src = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {src!r}); from emlab.model.worker import serve; serve({str(path)!r})"
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # not in the job's process group: Snakemake stopping this job spares it
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        conn = _connect(path)
        if conn is not None:
            return conn
        if proc.poll() is not None:
            raise WorkerUnavailable(f"the worker exited while starting (exit {proc.returncode}); see {log}")
        time.sleep(0.05)
    proc.kill()
    raise WorkerUnavailable(f"the worker did not start within {START_TIMEOUT:.0f} s; see {log}")


def _submit(script: str) -> int:
    folder = worker_dir()
    key = worker_key()
    path = folder / f"{key}.sock"
    if len(str(path)) > 100:  # a Unix socket's path has at most 107 bytes
        raise WorkerUnavailable(f"the socket path {path} is too long; set {DIR_ENV} to a shorter folder")
    conn = _connect(path)
    if conn is None:
        import fcntl

        with open(folder / f"{key}.lock", "w") as lock:  # one start per key, however many jobs ask at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = _connect(path)
            if conn is None:
                if path.exists():
                    path.unlink()  # a worker that died left its socket
                conn = _start(path)
    with conn:
        request = json.dumps({"script": script, "cwd": os.getcwd(), "env": dict(os.environ), "argv": sys.argv})
        payload = request.encode()
        socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        if _recv_exactly(conn, 1) != ACCEPTED:
            raise WorkerUnavailable("the worker closed the connection before taking the job")
        try:  # the job has started: from here on a failure is this job's, never a reason to run it again
            status = _recv_exactly(conn, _STATUS.size)
        except OSError:
            status = b""
        except KeyboardInterrupt:  # Ctrl-C: closing the connection makes the worker stop the job's child
            return 130
        if len(status) != _STATUS.size:
            print("emlab warm worker: the worker stopped before this job ended", file=sys.stderr)
            return 1
        code = _STATUS.unpack(status)[0]
        return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# --- the worker process ----------------------------------------------------------------------------------


def serve(path: str) -> None:
    """Import once, then fork a child per job until idle (or until another worker owns the socket)."""
    import gc
    import importlib

    started = time.monotonic()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()  # children share the imported objects' pages instead of copying them on the first collection
    print(f"worker {os.getpid()}: imports took {time.monotonic() - started:.1f} s", flush=True)
    idle = float(os.environ.get(IDLE_ENV, IDLE_SECONDS))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(16)
    os.replace(staging, path)  # clients see the socket only once the worker listens
    inode = os.stat(path).st_ino
    wake_r, wake_w = os.pipe()  # a child's exit (SIGCHLD) wakes the loop at once, not at its next timeout
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    jobs: dict[int, socket.socket] = {}  # child pid -> its client's connection
    stopping: dict[int, float] = {}  # child pid -> when to SIGKILL its group (its client went away)
    last_job = time.monotonic()
    try:
        while True:
            # a client already gone stays out: its connection would read as EOF at once, every turn
            waiting = [listener, wake_r, *(c for p, c in jobs.items() if p not in stopping)]
            readable, _, _ = select.select(waiting, [], [], 0.5)
            for conn in readable:
                if conn is wake_r:
                    while _drain(wake_r):
                        pass
                    continue
                if conn is listener:
                    client, _ = listener.accept()
                    pid = _take_job(client, listener, jobs, (wake_r, wake_w))
                    if pid:
                        jobs[pid] = client
                        last_job = time.monotonic()
                    continue
                pid = next(p for p, c in jobs.items() if c is conn)
                try:
                    gone = not conn.recv(1)  # the client sends nothing more: EOF means it is gone
                except OSError:
                    gone = True
                if gone:
                    _signal_group(pid, signal.SIGTERM)
                    stopping[pid] = time.monotonic() + 10
            for pid, deadline in list(stopping.items()):
                if time.monotonic() > deadline:
                    _signal_group(pid, signal.SIGKILL)
            for pid, status in _reap():
                conn = jobs.pop(pid, None)
                stopping.pop(pid, None)
                if conn is not None:
                    try:
                        conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
                    except OSError:
                        pass
                    conn.close()
                last_job = time.monotonic()
            if not jobs and (time.monotonic() - last_job > idle or not _owns(path, inode)):
                break
    finally:
        if _owns(path, inode):
            os.unlink(path)
        listener.close()


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _owns(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


def _reap() -> list[tuple[int, int]]:
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _take_job(
    client: socket.socket, listener: socket.socket, jobs: dict[int, socket.socket], wake: tuple[int, int]
) -> int | None:
    """Read one job request and fork its child; the child's pid, or None for a broken request."""
    try:
        client.settimeout(10)
        header, fds, _, _ = socket.recv_fds(client, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            raise OSError("incomplete request")
        payload = _recv_exactly(client, _HEADER.unpack(header)[0])
        request = json.loads(payload)
        client.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"worker: dropped a request ({exc})", flush=True)
        client.close()
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        try:
            client.sendall(ACCEPTED)
        except OSError:  # the client is gone already: the loop sees its EOF and stops the child
            pass
        return pid
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in wake:
        os.close(fd)
    listener.close()
    for conn in jobs.values():
        conn.close()
    client.close()
    _run_child(request, fds)  # never returns


def _run_child(request: dict, fds: list[int]) -> None:
    import atexit
    import runpy

    code = 1
    try:
        os.setpgid(0, 0)  # the job and whatever it starts form one group that the worker can stop
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a fresh process would have it
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[IN_CHILD] = "1"
        sys.argv = list(request["argv"])
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()  # what an interpreter's exit would run (temporary folders, log handlers)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def stop_workers(folder: Path | None = None) -> int:
    """Stop every worker with a socket in `folder` (default: this user's); how many were asked to stop."""
    folder = folder or worker_dir()
    stopped = 0
    for path in folder.glob("*.sock"):
        path.unlink()  # a worker whose socket is gone exits once its running jobs end
        stopped += 1
    return stopped


if __name__ == "__main__":
    if sys.argv[1:] == ["--stop"]:
        print(f"asked {stop_workers()} warm worker(s) to stop")
    else:
        print("usage: python -m emlab.model.worker --stop", file=sys.stderr)
        sys.exit(2)
