"""Models, the minutes-to-threshold math, training, evaluation, the bundle and the MLflow registry."""

import logging
import warnings


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Keep cmdstanpy's and Prophet's progress lines out of a notebook (or any caller's) output.

    Call it yourself: nothing calls it at import. It covers this process, so
    train in it (``TrainConfig(n_jobs=1)``, as :class:`~training.predict.CrossingPredictor`
    does) for silent cells: worker processes start with the libraries' own settings.
    """
    # cmdstanpy's tqdm asks for ipywidgets in a notebook, Prophet for plotly: neither is used
    warnings.filterwarnings("ignore", message="IProgress not found")
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    from cmdstanpy.utils import get_logger

    get_logger().setLevel(level)  # after cmdstanpy set its own level on first use
    import prophet  # noqa: F401  (its import sets the "prophet" logger to INFO)

    logging.getLogger("prophet").setLevel(level)
