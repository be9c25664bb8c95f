"""The base of every agent's typed prediction result.

On the wire and in the store a result stays the JSON object it always was: an agent
builds its Struct and the prediction carries it as a plain dict (`as_result`), in field
order, so the payload is byte for byte what it was. Readers (the SCADA bridge, shift
summaries) take it back as the agent's Struct (`of`) instead of picking keys by string.
"""

from __future__ import annotations

from typing import Any, Self

import msgspec

from ..messages import Prediction


class AgentResult(msgspec.Struct, kw_only=True, gc=False):
    @classmethod
    def of(cls, prediction: Prediction) -> Self | None:
        """The prediction's result as this Struct; None when it is not one. Predictions
        also arrive over MQTT from other instances, which may run another version: one
        odd result must not stop the reader that follows the stream."""
        try:
            return msgspec.convert(prediction.result, cls)
        except msgspec.ValidationError:
            return None

    def as_result(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)
