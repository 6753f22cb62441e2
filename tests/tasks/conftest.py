from tests.study.conftest import study_file, tiny_model_dir

__all__ = ["study_file", "tiny_model_dir"]
