"""python -m draft_service --model M --port P   (--help lists every flag)"""

from specdec.rpc.model_service import main_model_service

from .servicer import start


def main() -> None:
    main_model_service("python -m draft_service", "draft", 50051, start)


if __name__ == "__main__":
    main()
