"""Task instructions for queries: the presets, and the rule that refuses a contradiction.

``INSTRUCTIONS`` holds the paper's instructions for the BEIR datasets (E5-mistral,
appendix; the same strings as the released evaluation): `engine serve` offers them
as presets, `engine bench beir` uses them. Queries only: documents never get one.
Which instruction a search uses is :func:`indexer.search.resolve_instruction`.
"""

from engine.errors import EngineError


class InstructionConflict(EngineError):
    """An instruction and "no instruction" asked for together (the server answers 422)."""


def check_instruction(instruction: str | None, no_instruct: bool) -> None:
    """Refuse ``--instruct`` with ``--no-instruct``: the CLI, the server, every search.

    Torch-free, so `engine search --server` checks it before it sends anything.
    """
    if instruction and no_instruct:
        raise InstructionConflict("--instruct and --no-instruct exclude each other")


INSTRUCTIONS: dict[str, str] = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or "
    "refute the claim",
    "CQADupStack": "Given a question, retrieve detailed question descriptions from Stackexchange "
    "that are duplicates to the given question",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to "
    "the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the "
    "given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the "
    "question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
}
