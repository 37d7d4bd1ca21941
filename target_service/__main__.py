"""python -m target_service --model M --port P   (--help lists every flag)"""

from specdec.rpc.model_service import main_model_service

from .servicer import start


def main() -> None:
    main_model_service("python -m target_service", "target", 50052, start)


if __name__ == "__main__":
    main()
