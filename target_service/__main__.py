"""python -m target_service --model M --port P   (--help lists every flag)"""

from specdec.service_main import run_service


def main() -> None:
    run_service("python -m target_service", "target", 50052, "target_service.servicer")


if __name__ == "__main__":
    main()
