"""python -m draft_service --model M --port P   (--help lists every flag)"""

from specdec.service_main import run_service


def main() -> None:
    run_service("python -m draft_service", "draft", 50051, "draft_service.servicer")


if __name__ == "__main__":
    main()
