"""The daemon's lifecycle: start the pieces in order, serve until told to stop, stop them in reverse.

Start: store → node id → hub and core handlers → module manager (plans autoload + the user's wishes) →
ZeroMQ server → the ``enigmad ready rpc=… events=…`` line (stdout and log) and systemd ``READY=1`` → the
modules load in the background, then the ``enigmad loaded active=… failed=…`` line and ``sys.loaded``.
The bus answers before any model work because a model load takes 50-139 s on a small machine, and a daemon
that is silent that long looks dead to its clients, to ``enigma status`` and to a systemd start timeout.
Calls to a loading module's methods wait for it (``daemon.manager``); ``sys.status`` and ``STATUS=`` say what
is still loading.
Stop (SIGTERM/SIGINT), within ``daemon.shutdown_timeout``: the server stops accepting and ends in-flight
requests with ``cancelled``, loads still running are cancelled, modules unload (dependents first), the store
checkpoints and closes; exit 0.
SIGHUP re-reads the config: log levels and additions to the autoload list apply at once (a module dropped
from the list keeps running until unloaded), the allow-list is re-read, ``[modules.<name>]`` tables apply
the next time that module loads; endpoint, data-dir and security changes are logged as needing a restart.
Clients stay connected throughout.

Modules see the daemon only through typed services (``daemon.services``): the ``Store``, ``Node`` (identity
and endpoints) and ``NodeKeys`` (the CURVE identity). The ``backup.*`` handlers see it only as a
``LiveRestore``: ``restore()`` is the one operation that swaps the daemon's state while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bus.auth import AllowList, KeyPair, ServerAuth, generate_keypair, load_keypair, save_keypair
from bus.errors import Unavailable
from daemon import backup
from daemon import logging as dlog
from daemon.config import Config, ConfigError, derive_node_id
from daemon.handlers import Core, register_all
from daemon.hub import Hub
from daemon.manager import DEFAULT_LOAD_WAIT, ModuleManager
from daemon.module import ModuleContext
from daemon.notify import Notifier
from daemon.services import Node, NodeKeys, Restored, Services
from daemon.store import Store
from daemon.topics import MODULE_STATE, SYS_LOADED, SYS_RELOADED, SYS_STARTED, SYS_STOPPING

log = logging.getLogger("enigma.daemon")

RESTORE_DRAIN_TIMEOUT = 10.0  # seconds requests cancelled by a live restore get to finish (and store what they had)

# Keys a running daemon cannot change without dropping its clients or its store.
RESTART_KEYS = ("daemon.rpc", "daemon.events", "daemon.data_dir", "daemon.node_id", "daemon.heartbeat")


def version() -> str:
    try:
        return metadata.version("enigma")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def server_auth(config: Config, *, create: bool = True) -> ServerAuth:
    """The server's key pair (created on first use, mode 0600) and its allow-list."""
    try:
        keypair = load_keypair(config.key_file)
    except FileNotFoundError:
        if not create:
            raise
        keypair = generate_keypair()
        save_keypair(config.key_file, keypair)
        log.info("created the server key pair in %s", config.key_file)
    return ServerAuth(keypair, AllowList(config.allow_file).load())


class Daemon:
    """One running enigmad. ``reload_config`` re-reads the config on SIGHUP (same file, env and flags)."""

    def __init__(
        self,
        config: Config,
        *,
        registry: dict[str, str] | None = None,
        reload_config: Callable[[], Config] | None = None,
    ) -> None:
        if registry is None:
            from daemon.modules import REGISTRY

            registry = REGISTRY
        self.config = config
        self.registry = registry
        self._reload_config = reload_config
        self.boot_id = os.urandom(8).hex()
        self.store: Store | None = None
        self.hub: Hub | None = None
        self.manager: ModuleManager | None = None
        self.server: Any = None
        self.core: Core | None = None
        self.auth: ServerAuth | None = None
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loading: asyncio.Task[None] | None = None  # the modules' background load (``_load_modules``)
        self._planned: list[str] = []
        self.notifier = Notifier()
        self.services = Services()  # typed services every module's context shares
        self._withdraw_store: Callable[[], None] = lambda: None

    # -- start --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bring the daemon up to answering requests, then start loading the modules in the background; on a
        failure before serving, closes what was opened and re-raises."""
        from bus.zmq_server import ZmqServer

        cfg = self.config
        cfg.check_modules(self.registry)
        for name in cfg.modules.sections:
            load_wait(cfg, name)  # a bad value fails the start, naming the key, not the first call that waits
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.store = await Store.open(cfg.data_dir)
            self._withdraw_store = self.services.provide(Store, self.store)
            node_id = await self._node_id()
            if cfg.security.curve:  # before the modules: a bad key file should fail fast, not after a model load
                self.auth = server_auth(cfg)
            self.hub = Hub()
            self.notifier.status("starting")
            self.manager = ModuleManager(
                self.hub, self.store, self.registry, self._context_for, load_wait=lambda n: load_wait(self.config, n)
            )
            self.core = Core(self.hub, self.manager, node_id, self.boot_id, version(), cfg.data_dir)
            self.core.live = self
            node = _NodeView(self)
            self.services.provide(Node, node)
            self.services.provide(NodeKeys, node)
            register_all(self.hub, self.core)
            # Planned, not loaded: from here a call to a planned module's method waits for it instead of
            # failing, so the server may answer before the modules are up.
            self._planned = await self.manager.plan(cfg.autoload_for(self.registry))
            self.server = ZmqServer(
                self.hub,
                rpc=cfg.daemon.rpc,
                events=cfg.daemon.events,
                node_id=node_id,
                boot_id=self.boot_id,
                auth=self.auth,
                heartbeat=cfg.daemon.heartbeat,
                require_curve=cfg.security.curve,
            )
            await self.server.start()
            self.core.server = self.server
        except BaseException:
            await self._close_parts(timeout=cfg.daemon.shutdown_timeout)
            raise
        eps = self.server.endpoints
        self.hub.publish(SYS_STARTED, {"node_id": node_id, "boot_id": self.boot_id, "version": self.core.version})
        line = f"enigmad ready rpc={eps['rpc']} events={eps['events']}"
        log.info(line, extra={"kv": {"node_id": node_id, "boot_id": self.boot_id, "pid": os.getpid()}})
        print(line, flush=True)
        self.core.phase = "loading" if self._planned else "ready"
        # Only now: the endpoints are bound and the store is open, so a client started after us gets answers.
        # READY=1 means "answering", not "model loaded": STATUS= says what is still loading.
        self.notifier.ready(self._status_line())
        self._spawn(self.notifier.run_watchdog)
        self._spawn(self._status_loop)
        if self._planned:
            self._loading = asyncio.get_running_loop().create_task(self._load_modules(), name="enigmad-modules")
            self._loading.add_done_callback(_report_crash)
        else:
            self._loaded(0.0)

    async def wait_loaded(self) -> None:
        """Return once the modules this start loads are active or failed (at once when there were none)."""
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def _load_modules(self) -> None:
        """Load the planned modules (autoload + wishes) while the bus serves; a module that fails is logged
        and left FAILED, as at any start. Cancelled by ``stop``: each unfinished load then ends FAILED."""
        assert self.manager is not None
        assert self.hub is not None
        started = time.monotonic()
        # STATUS= follows every transition, so ``systemctl status`` shows the model's load as it goes.
        remove = self.hub.add_listener(MODULE_STATE, lambda _t, _b: self.notifier.status(self._status_line()))
        try:
            await self.manager.restore(planned=self._planned)
        finally:
            remove()
        self._loaded(time.monotonic() - started)

    def _loaded(self, seconds: float) -> None:
        assert self.manager is not None
        assert self.hub is not None
        assert self.core is not None
        self.core.phase = "ready"
        modules = {m["name"]: m for m in self.manager.list()}
        active = [n for n in self._planned if modules[n]["state"] == "active"]
        failed = {n: modules[n]["error"] or modules[n]["state"] for n in self._planned if n not in active}
        self.hub.publish(SYS_LOADED, {"active": active, "failed": failed, "seconds": round(seconds, 1)})
        line = f"enigmad loaded active={','.join(active) or '-'} failed={','.join(failed) or '-'}"
        log.info(line, extra={"kv": {"seconds": round(seconds, 1)}})
        print(line, flush=True)  # always, also with nothing to load: scripts and tests wait for this line
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        """systemd's STATUS=: what is still loading while the modules come up, then what is being served."""
        states = self.manager.states() if self.manager else []
        active = sum(1 for m in states if m["state"] == "active")
        if self.core is not None and self.core.phase == "loading" and self.manager is not None:
            loading = self.manager.loading()
            if loading:
                what = ", ".join(f"{m['name']} ({m.get('stage') or m['state']}, {m['for']:.0f} s)" for m in loading)
                done = sum(1 for m in states if m["name"] in self._planned and m["state"] == "active")
                return f"loading {what}; {done} of {len(self._planned)} modules active"
        stats = self.server.stats() if self.server is not None else {}
        return (
            f"serving: {stats.get('clients', 0)} clients, {stats.get('inflight', 0)} requests in flight, "
            f"{active} modules active"
        )

    async def _status_loop(self, every: float = 5.0) -> None:
        """Keep systemd's STATUS= line (``systemctl status enigmad``) saying what the daemon is doing."""
        if not self.notifier.enabled:
            return
        last = ""
        while True:
            await asyncio.sleep(every)
            line = self._status_line()
            if line != last:
                self.notifier.status(line)
                last = line

    async def _node_id(self) -> str:
        assert self.store is not None
        if self.config.daemon.node_id:
            return self.config.daemon.node_id
        node_id = await self.store.get_kv("node_id")
        if node_id is None:
            node_id = derive_node_id()
            await self.store.set_kv("node_id", node_id)
            log.info("this node is %s", node_id)
        return node_id

    def _context_for(self, name: str) -> ModuleContext:
        assert self.hub is not None
        assert self.core is not None
        config = self.config.section(f"modules.{name}")
        config.pop("load_wait", None)  # the manager's key, not the module's
        return ModuleContext(
            hub=self.hub,
            config=config,
            data_dir=self.config.data_dir,
            node_id=self.core.node_id,
            log=logging.getLogger(f"enigma.module.{name}"),
            services=self.services,
            origin=self.config.source,
        )

    # -- run ----------------------------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; returns the exit code."""
        loop = asyncio.get_running_loop()
        if self.config.daemon.slow_callback > 0:
            loop.set_debug(True)  # asyncio then warns (logger "asyncio") about each slow callback
            loop.slow_callback_duration = self.config.daemon.slow_callback
        # Handlers first: a SIGTERM that arrives the moment "ready" is out must stop us gracefully, not kill us.
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reload)
        started = False
        try:
            await self.start()  # on failure it closes what it opened itself
            started = True
            await self._stop.wait()
        finally:
            # The handlers stay while stopping: a second SIGTERM must not kill a shutdown that is saving state.
            if started:
                await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def request_stop(self, reason: str = "requested") -> None:
        if self._stop.is_set():
            log.info("already stopping", extra={"kv": {"signal": reason}})
            return
        log.info("stopping", extra={"kv": {"reason": reason}})
        self._stop_reason = reason
        self._stop.set()

    def _spawn(self, fn: Callable[[], Any]) -> None:
        task = asyncio.get_running_loop().create_task(fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Graceful stop within ``shutdown_timeout`` seconds."""
        self.notifier.stopping(f"stopping ({self._stop_reason or 'requested'})")
        if self.hub is not None and self.core is not None:
            self.hub.publish(
                SYS_STOPPING, {"node_id": self.core.node_id, "boot_id": self.boot_id, "reason": self._stop_reason}
            )
        await self._close_parts(timeout=self.config.daemon.shutdown_timeout)
        self.notifier.close()
        log.info("stopped")

    async def _close_parts(self, timeout: float) -> None:  # noqa: ASYNC109 - a budget shared by several steps
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:
            budget = max(0.5, min(5.0, (deadline - loop.time()) / 2))
            closing = asyncio.ensure_future(self.server.close(timeout=budget))
            done, _ = await asyncio.wait([closing], timeout=budget + 2.0)
            if not done:
                log.error("the ZeroMQ server did not close within %.1fs; going on without it", budget + 2.0)
                _log_stuck_tasks()
                closing.cancel()
                await asyncio.gather(closing, return_exceptions=True)
            elif closing.exception() is not None:
                log.error("closing the ZeroMQ server failed", exc_info=closing.exception())
            self.server = None
        loading, self._loading = self._loading, None
        if loading is not None and not loading.done():
            loading.cancel()  # each unfinished load ends FAILED ("load cancelled") and undoes what it did
            budget = max(0.5, (deadline - loop.time()) / 2)
            done, _ = await asyncio.wait([loading], timeout=budget)
            if not done:
                log.error("module loads did not stop within %.1fs of being cancelled; going on", budget)
                _log_stuck_tasks()
        if self.manager is not None:
            try:
                await asyncio.wait_for(self.manager.shutdown(), max(0.5, deadline - loop.time()))
            except TimeoutError:
                log.error("modules did not unload within the shutdown time limit of %.1fs", timeout)
            except Exception:
                log.exception("unloading modules failed")
            self.manager = None
        if self.store is not None:
            self._withdraw_store()
            await self.store.close()
            self.store = None

    # -- live restore (daemon.services.LiveRestore, for the backup.* handlers) -------------------------------
    def store_path(self) -> Path:
        if self.store is None or self.manager is None:
            raise Unavailable("the daemon is starting or stopping; try again in a moment")
        return self.store.path

    def state_paths(self) -> dict[str, Path]:
        return backup.state_paths(self.config)

    @property
    def backup_max_bytes(self) -> int:
        return int(self.config.daemon.backup_max_bytes)

    async def restore(self, restorable: backup.Restorable, *, keep: asyncio.Task[Any] | None) -> Restored:
        """Replace the daemon's state with ``restorable`` while it runs (``daemon.handlers.backup`` documents
        the steps); the clients stay connected, requests in flight but ``keep`` end ``cancelled``."""
        db_path = self.store_path()
        assert self.manager is not None
        assert self.store is not None
        if self.server is not None:
            pending = self.server.cancel_inflight("the daemon is restoring a backup", keep=keep)
            if pending:
                await asyncio.wait(pending, timeout=RESTORE_DRAIN_TIMEOUT)
        log.warning("restoring a backup: unloading modules and closing the store")
        self.notifier.status("restoring a backup")
        await self.manager.shutdown()
        self._withdraw_store()
        await self.store.close()
        self.store = None
        try:
            kept = await asyncio.to_thread(backup.swap_db_files, db_path, restorable.db)
        except BaseException:
            log.exception("the restored database could not be moved in; reopening the previous one")
            await self._reopen(db_path)
            raise
        try:
            store = await Store.open(db_path)
        except BaseException:
            log.exception("the restored database could not be opened; putting the previous one back")
            await asyncio.to_thread(backup.undo_swap, db_path, kept)
            await self._reopen(db_path)
            raise
        changed = await asyncio.to_thread(backup.install_state_files, restorable, self.state_paths())
        self._use_store(store)
        await self.manager.restore(self.config.autoload_for(self.registry))
        if self.auth is not None and backup.ALLOW_MEMBER in changed:
            try:
                self.auth.allow.load()
            except Exception as exc:
                log.error("the restored allow-list cannot be read, keeping the old one: %s", exc)
        node_in_db = await store.get_kv("node_id")
        node_id = self.core.node_id if self.core is not None else ""
        restart = backup.KEY_MEMBER in changed or (
            not self.config.daemon.node_id and node_in_db is not None and node_in_db != node_id
        )
        active = [m["name"] for m in self.manager.states() if m["state"] == "active"]
        self.notifier.status("restored a backup; serving")
        return Restored(modules=active, state_files=changed, before_restore=kept, restart_needed=restart)

    async def _reopen(self, db_path: Path) -> None:
        self._use_store(await Store.open(db_path))
        assert self.manager is not None
        await self.manager.restore(self.config.autoload_for(self.registry))

    def _use_store(self, store: Store) -> None:
        self.store = store
        self._withdraw_store = self.services.provide(Store, store)
        assert self.manager is not None
        self.manager.use_store(store)

    # -- SIGHUP -------------------------------------------------------------------------------------------
    async def reload(self) -> list[str]:
        """Re-read the config and apply what can change live; returns the dotted keys that changed."""
        if self._reload_config is None:
            log.warning("SIGHUP ignored: this daemon was started without a config source to re-read")
            return []
        self.notifier.reloading()
        try:
            return await self._reload()
        finally:
            self.notifier.ready(self._status_line())

    async def _reload(self) -> list[str]:
        assert self._reload_config is not None
        try:
            new = self._reload_config()
            new.check_modules(self.registry)
        except ConfigError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            if self.hub is not None:
                self.hub.publish(SYS_RELOADED, {"changed": [], "error": str(exc)})
            return []
        old, self.config = self.config, new
        before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        dlog.setup(new.daemon.log_level, new.daemon.log_levels)
        for key in changed:
            if key in RESTART_KEYS or key.startswith("security."):
                log.warning("%s changed: takes effect at the next restart", key)
        # Until then the running values stay, so modules loaded from now on see the daemon as it really is.
        for key in RESTART_KEYS:
            attr = key.removeprefix("daemon.")
            setattr(new.daemon, attr, getattr(old.daemon, attr))
        new.security = old.security
        if self.auth is not None:
            try:
                self.auth.allow.load()
            except Exception as exc:
                log.error("allow-list reload failed, keeping the old one: %s", exc)
        if self.manager is not None:
            added = [n for n in new.autoload_for(self.registry) if n not in old.autoload_for(self.registry)]
            wishes = await self.store.wishes() if self.store is not None else {}
            for name in added:
                if wishes.get(name, True):
                    try:
                        await self.manager.load(name, persist=False)
                    except Exception as exc:
                        log.error("could not load %s on reload: %s", name, exc)
        if self.hub is not None:
            self.hub.publish(SYS_RELOADED, {"changed": changed})
        log.info("config reloaded", extra={"kv": {"changed": ",".join(changed) or "-"}})
        return changed


class _NodeView:
    """This daemon as its modules may see it (``daemon.services.Node`` and ``NodeKeys``), nothing more."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @property
    def node_id(self) -> str:
        core = self._daemon.core
        return core.node_id if core is not None else ""

    @property
    def boot_id(self) -> str:
        return self._daemon.boot_id

    @property
    def version(self) -> str:
        return version()

    def endpoints(self) -> dict[str, str]:
        server = self._daemon.server
        return dict(server.endpoints) if server is not None else {}

    def curve(self) -> tuple[KeyPair, AllowList]:
        d = self._daemon
        auth = d.auth if d.auth is not None else server_auth(d.config)
        return auth.keypair, auth.allow


def load_wait(config: Config, name: str) -> float:
    """``[modules.<name>] load_wait``: seconds a call waits for that module to finish loading."""
    value = config.section(f"modules.{name}").get("load_wait", DEFAULT_LOAD_WAIT)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"modules.{name}.load_wait must be a positive number of seconds, got {value!r}")
    return float(value)


def _report_crash(task: asyncio.Task[None]) -> None:
    """A bug in the background load would otherwise vanish with its task (each module's own failure is
    already logged by the manager)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("loading the modules failed", exc_info=task.exception())


def _log_stuck_tasks() -> None:
    """Say where every task is waiting, so a shutdown that hangs can be fixed rather than guessed at."""
    import io

    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        buf = io.StringIO()
        task.print_stack(limit=8, file=buf)
        log.error("still running at shutdown: %s\n%s", task.get_name(), buf.getvalue().rstrip())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


async def serve(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Run one daemon to completion (the body of ``enigmad``)."""
    started = time.monotonic()
    daemon = Daemon(config, reload_config=reload_config)
    code = await daemon.run()
    log.info("ran for %.1fs", time.monotonic() - started)
    return code
