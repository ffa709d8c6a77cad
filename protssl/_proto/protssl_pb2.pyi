from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_BOS: _ClassVar[Pooling]
    POOLING_PER_RESIDUE: _ClassVar[Pooling]
    POOLING_SEGMENTS: _ClassVar[Pooling]

class VectorDType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_DTYPE_UNSPECIFIED: _ClassVar[VectorDType]
    VECTOR_DTYPE_FLOAT32: _ClassVar[VectorDType]
    VECTOR_DTYPE_FLOAT16: _ClassVar[VectorDType]

class OnInvalid(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_INVALID_UNSPECIFIED: _ClassVar[OnInvalid]
    ON_INVALID_FAIL: _ClassVar[OnInvalid]
    ON_INVALID_SKIP: _ClassVar[OnInvalid]
    ON_INVALID_REPLACE: _ClassVar[OnInvalid]

class ClassifierMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFIER_METHOD_UNSPECIFIED: _ClassVar[ClassifierMethod]
    CLASSIFIER_METHOD_PROTOTYPE: _ClassVar[ClassifierMethod]
    CLASSIFIER_METHOD_KNN: _ClassVar[ClassifierMethod]
    CLASSIFIER_METHOD_LINEAR: _ClassVar[ClassifierMethod]
    CLASSIFIER_METHOD_CONTRASTIVE: _ClassVar[ClassifierMethod]
    CLASSIFIER_METHOD_HYBRID: _ClassVar[ClassifierMethod]
POOLING_UNSPECIFIED: Pooling
POOLING_MEAN: Pooling
POOLING_BOS: Pooling
POOLING_PER_RESIDUE: Pooling
POOLING_SEGMENTS: Pooling
VECTOR_DTYPE_UNSPECIFIED: VectorDType
VECTOR_DTYPE_FLOAT32: VectorDType
VECTOR_DTYPE_FLOAT16: VectorDType
ON_INVALID_UNSPECIFIED: OnInvalid
ON_INVALID_FAIL: OnInvalid
ON_INVALID_SKIP: OnInvalid
ON_INVALID_REPLACE: OnInvalid
CLASSIFIER_METHOD_UNSPECIFIED: ClassifierMethod
CLASSIFIER_METHOD_PROTOTYPE: ClassifierMethod
CLASSIFIER_METHOD_KNN: ClassifierMethod
CLASSIFIER_METHOD_LINEAR: ClassifierMethod
CLASSIFIER_METHOD_CONTRASTIVE: ClassifierMethod
CLASSIFIER_METHOD_HYBRID: ClassifierMethod

class Sequence(_message.Message):
    __slots__ = ("id", "sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: str
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[str] = ...) -> None: ...

class EmbedOptions(_message.Message):
    __slots__ = ("model", "pooling", "layer", "dtype", "on_invalid")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ON_INVALID_FIELD_NUMBER: _ClassVar[int]
    model: str
    pooling: Pooling
    layer: int
    dtype: VectorDType
    on_invalid: OnInvalid
    def __init__(self, model: _Optional[str] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., layer: _Optional[int] = ..., dtype: _Optional[_Union[VectorDType, str]] = ..., on_invalid: _Optional[_Union[OnInvalid, str]] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("model_name", "model_sha256", "layer", "pooling", "compute_dtype", "window_policy", "windowed", "windows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_POLICY_FIELD_NUMBER: _ClassVar[int]
    WINDOWED_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_sha256: str
    layer: int
    pooling: str
    compute_dtype: str
    window_policy: str
    windowed: bool
    windows: int
    def __init__(self, model_name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., layer: _Optional[int] = ..., pooling: _Optional[str] = ..., compute_dtype: _Optional[str] = ..., window_policy: _Optional[str] = ..., windowed: _Optional[bool] = ..., windows: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("id", "length", "dim", "dtype", "vector", "cached", "provenance")
    ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    length: int
    dim: int
    dtype: VectorDType
    vector: bytes
    cached: bool
    provenance: Provenance
    def __init__(self, id: _Optional[str] = ..., length: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[VectorDType, str]] = ..., vector: _Optional[bytes] = ..., cached: _Optional[bool] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("sequences", "options")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    options: EmbedOptions
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("sequences", "options")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    options: EmbedOptions
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class EmbedProgress(_message.Message):
    __slots__ = ("records_received", "records_done", "residues_done", "records_cached")
    RECORDS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DONE_FIELD_NUMBER: _ClassVar[int]
    RESIDUES_DONE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CACHED_FIELD_NUMBER: _ClassVar[int]
    records_received: int
    records_done: int
    residues_done: int
    records_cached: int
    def __init__(self, records_received: _Optional[int] = ..., records_done: _Optional[int] = ..., residues_done: _Optional[int] = ..., records_cached: _Optional[int] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("embedding", "progress")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    progress: EmbedProgress
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., progress: _Optional[_Union[EmbedProgress, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "sha256", "num_layers", "embed_dim", "max_residues", "compute_dtype", "parameters", "is_default", "default_layer", "recommended_pooling")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_RESIDUES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LAYER_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_POOLING_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    num_layers: int
    embed_dim: int
    max_residues: int
    compute_dtype: str
    parameters: int
    is_default: bool
    default_layer: int
    recommended_pooling: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., num_layers: _Optional[int] = ..., embed_dim: _Optional[int] = ..., max_residues: _Optional[int] = ..., compute_dtype: _Optional[str] = ..., parameters: _Optional[int] = ..., is_default: _Optional[bool] = ..., default_layer: _Optional[int] = ..., recommended_pooling: _Optional[str] = ...) -> None: ...

class RequestLimits(_message.Message):
    __slots__ = ("max_sequences", "max_residues", "max_sequence_length")
    MAX_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESIDUES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    max_sequences: int
    max_residues: int
    max_sequence_length: int
    def __init__(self, max_sequences: _Optional[int] = ..., max_residues: _Optional[int] = ..., max_sequence_length: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "limits")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: RequestLimits
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[RequestLimits, _Mapping]] = ...) -> None: ...

class LabelledSequence(_message.Message):
    __slots__ = ("id", "sequence", "labels")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifierMetrics(_message.Message):
    __slots__ = ("held_out", "top1_accuracy", "answered_rate", "accuracy_on_answered", "examples", "classes", "layer", "layer_scores", "best_precision")
    class LayerScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    TOP1_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_RATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_ON_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    LAYER_SCORES_FIELD_NUMBER: _ClassVar[int]
    BEST_PRECISION_FIELD_NUMBER: _ClassVar[int]
    held_out: str
    top1_accuracy: float
    answered_rate: float
    accuracy_on_answered: float
    examples: int
    classes: int
    layer: int
    layer_scores: _containers.ScalarMap[int, float]
    best_precision: float
    def __init__(self, held_out: _Optional[str] = ..., top1_accuracy: _Optional[float] = ..., answered_rate: _Optional[float] = ..., accuracy_on_answered: _Optional[float] = ..., examples: _Optional[int] = ..., classes: _Optional[int] = ..., layer: _Optional[int] = ..., layer_scores: _Optional[_Mapping[int, float]] = ..., best_precision: _Optional[float] = ...) -> None: ...

class ClassifierInfo(_message.Message):
    __slots__ = ("id", "name", "version", "method", "model_sha256", "labels", "examples", "metrics", "created_at", "pooling", "threshold", "fallback_threshold", "ood_threshold", "multi_label_ratio", "back_off_levels")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MULTI_LABEL_RATIO_FIELD_NUMBER: _ClassVar[int]
    BACK_OFF_LEVELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    version: int
    method: ClassifierMethod
    model_sha256: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    examples: int
    metrics: ClassifierMetrics
    created_at: str
    pooling: Pooling
    threshold: float
    fallback_threshold: float
    ood_threshold: float
    multi_label_ratio: float
    back_off_levels: _containers.RepeatedCompositeFieldContainer[BackOffLevel]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., method: _Optional[_Union[ClassifierMethod, str]] = ..., model_sha256: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., examples: _Optional[int] = ..., metrics: _Optional[_Union[ClassifierMetrics, _Mapping]] = ..., created_at: _Optional[str] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., threshold: _Optional[float] = ..., fallback_threshold: _Optional[float] = ..., ood_threshold: _Optional[float] = ..., multi_label_ratio: _Optional[float] = ..., back_off_levels: _Optional[_Iterable[_Union[BackOffLevel, _Mapping]]] = ...) -> None: ...

class BackOffLevel(_message.Message):
    __slots__ = ("depth", "parents", "threshold")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    depth: int
    parents: int
    threshold: float
    def __init__(self, depth: _Optional[int] = ..., parents: _Optional[int] = ..., threshold: _Optional[float] = ...) -> None: ...

class CreateClassifierRequest(_message.Message):
    __slots__ = ("name", "method", "model", "examples", "new_version", "pooling")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: ClassifierMethod
    model: str
    examples: _containers.RepeatedCompositeFieldContainer[LabelledSequence]
    new_version: bool
    pooling: Pooling
    def __init__(self, name: _Optional[str] = ..., method: _Optional[_Union[ClassifierMethod, str]] = ..., model: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[LabelledSequence, _Mapping]]] = ..., new_version: _Optional[bool] = ..., pooling: _Optional[_Union[Pooling, str]] = ...) -> None: ...

class AddExamplesRequest(_message.Message):
    __slots__ = ("name", "examples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    examples: _containers.RepeatedCompositeFieldContainer[LabelledSequence]
    def __init__(self, name: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[LabelledSequence, _Mapping]]] = ...) -> None: ...

class GetClassifierRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListClassifiersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListClassifiersResponse(_message.Message):
    __slots__ = ("classifiers",)
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    classifiers: _containers.RepeatedCompositeFieldContainer[ClassifierInfo]
    def __init__(self, classifiers: _Optional[_Iterable[_Union[ClassifierInfo, _Mapping]]] = ...) -> None: ...

class DeleteClassifierRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteClassifierResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("name", "version", "sequences", "top_k", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    top_k: int
    offset: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., top_k: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("id", "top", "abstained", "label", "probability", "status", "nearest_similarity", "evidence", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    ABSTAINED_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEAREST_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    top: _containers.RepeatedCompositeFieldContainer[LabelScore]
    abstained: bool
    label: str
    probability: float
    status: str
    nearest_similarity: float
    evidence: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., top: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., abstained: _Optional[bool] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ..., status: _Optional[str] = ..., nearest_similarity: _Optional[float] = ..., evidence: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("predictions", "classifier", "vectors_computed", "vectors_cached")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    VECTORS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    VECTORS_CACHED_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    classifier: ClassifierInfo
    vectors_computed: int
    vectors_cached: int
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., classifier: _Optional[_Union[ClassifierInfo, _Mapping]] = ..., vectors_computed: _Optional[int] = ..., vectors_cached: _Optional[int] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "name", "role", "created_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    created_at: str
    revoked_at: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., created_at: _Optional[str] = ..., revoked_at: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("role", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    name: str
    def __init__(self, role: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: TokenInfo
    token: str
    def __init__(self, info: _Optional[_Union[TokenInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
