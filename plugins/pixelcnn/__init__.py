"""PixelCNN family: ``pixelcnn`` (van den Oord et al. 2016) and ``gated-pixelcnn`` (van den Oord et al. 2016b).

Modules: ``base`` (scaled input, output layers, the family's parameters: a K-way softmax or PixelCNN++'s
discretized logistic mixture, config ``family``), ``pixelcnn`` and ``gated``, each with its cached step
(Ramachandran et al. 2017). The masks are the PixelRNN family's (``densreg.plugins.pixelrnn.masks``).

This module is the plugin (entry point ``pixelcnn``) and imports no torch: the models are registered by
import path.
"""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    register("densreg.plugins.pixelcnn.pixelcnn:PixelCNN", name="pixelcnn",
             description="PixelCNN (van den Oord et al. 2016): masked convolutions, residual blocks, parallel training")
    register("densreg.plugins.pixelcnn.gated:GatedPixelCNN", name="gated-pixelcnn",
             description="Gated PixelCNN (van den Oord et al. 2016b): vertical and horizontal stacks without blind "
                         "spot, gated units")
