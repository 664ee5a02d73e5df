"""Task instructions for queries: the presets `engine serve` offers, and `engine bench beir`'s.

The paper's instructions for the BEIR datasets (E5-mistral, appendix; the same
strings as the released evaluation). Queries only: documents never get one.
"""

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
