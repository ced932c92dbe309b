"""llama.cpp's ``llama-server`` command line over llama-cpp-python's server (tests, bench).

llama-cpp-python serves a real model's OpenAI routes, but not llama-server's own
routes or flags. Run as a llama_cpp instance's ``command_override`` (``python
tests/instances/llama_server.py``), this takes llama-server's flags and adds its
``/health``, ``/tokenize`` and ``/detokenize`` over the same loaded model.
"""

import argparse

import uvicorn
from fastapi import Body, Depends
from llama_cpp.server.app import create_app, get_llama_proxy
from llama_cpp.server.settings import Settings

parser = argparse.ArgumentParser()
parser.add_argument("-m", required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("-c", type=int, default=1024)
parser.add_argument("-t", type=int, default=2)
args, _ = parser.parse_known_args()

app = create_app(settings=Settings(model=args.m, n_ctx=args.c, n_threads=args.t, verbose=False))


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/tokenize")
async def tokenize(body: dict = Body(...), llama_proxy=Depends(get_llama_proxy)):  # noqa: B008
    text = str(body.get("content", ""))
    add_special = body.get("add_special") is True
    return {"tokens": llama_proxy(None).tokenize(text.encode(), add_bos=add_special, special=True)}


@app.post("/detokenize")
async def detokenize(body: dict = Body(...), llama_proxy=Depends(get_llama_proxy)):  # noqa: B008
    tokens = [t for t in body.get("tokens") or [] if isinstance(t, int)]
    return {"content": llama_proxy(None).detokenize(tokens).decode(errors="replace")}


uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
