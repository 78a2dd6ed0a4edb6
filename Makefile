# pyoverlay — build targets. DOCKER may name another client; DOCKER_HOST picks the daemon.
DOCKER ?= docker
PLUGIN_NAME ?= pyoverlay:latest
BASE ?= python:3.11-slim-bookworm
PYTHON_VERSION ?= 3.11
export DOCKER PLUGIN_NAME BASE PYTHON_VERSION

.PHONY: wheelhouse plugin

## wheelhouse: binary wheels of the dependencies for the image's Python, in build/wheelhouse
wheelhouse:
	packaging/wheelhouse.sh

## plugin: build the image and (re)create the managed plugin PLUGIN_NAME from it
plugin: wheelhouse
	packaging/build-plugin.sh
