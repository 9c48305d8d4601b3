"""Research models behind the scikit-learn estimator contract (one estimator per module).

Registry names (:func:`research.models.base.make_model`): ``xgboost``, ``lightgbm``,
``random_forest`` (:mod:`.trees`), ``lstm`` (:mod:`.lstm`), ``transformer`` (:mod:`.transformer`),
``regime`` (:mod:`.regime`), ``meta`` (:mod:`.meta`, the stacking meta-learner whose output alone
becomes trade decisions). Importing this package or any model module does not import TensorFlow;
the neural nets import it inside ``fit``/``predict``.
"""

from research.models.base import BASE_MODEL_NAMES, MODEL_NAMES, TINY_PARAMS, make_model, model_class

__all__ = ["BASE_MODEL_NAMES", "MODEL_NAMES", "TINY_PARAMS", "make_model", "model_class"]
