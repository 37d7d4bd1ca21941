"""python -m coordinator --draft HOST:PORT --target HOST:PORT --port P  (--help: every flag)"""

import asyncio

import structlog

from specdec.errors import SpecdecError
from specdec.logs import configure_logging
from specdec.rpc.server import wait_for_signal

from . import config
from .server import start

log = structlog.get_logger("coordinator")


def main() -> None:
    cfg = config.from_args(config.parser().parse_args())
    configure_logging(cfg.log_level, cfg.log_format)
    structlog.contextvars.bind_contextvars(service="coordinator")

    async def serve() -> None:
        coordinator = await start(cfg)
        await wait_for_signal()
        log.info("shutting down")
        await coordinator.stop(cfg.shutdown_grace_s)

    try:
        asyncio.run(serve())
    except SpecdecError as e:
        log.error("cannot start", code=e.code, error=str(e))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
