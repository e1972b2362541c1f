"""The release's own model code (jamespark3922/localized-skd @ bc29769, LAVIS fork, BSD-3-Clause: LICENSE.txt), loaded
without the LAVIS package, as the reference for `lskd convert-release`.

The six files beside this one are copied unchanged from `lavis/models/` of the release. LAVIS's package import pulls in
torchvision (which does not import beside this torch), timm, omegaconf and more, so `load()` registers small stand-ins
for the few names those files import and loads just the files:
- `lavis.common.*`, `lavis.models.base_model`, `lavis.models.blip_models.blip_outputs`, `lavis.models.clip_vit`:
  a registry decorator that returns its class, `BaseModel` (nn.Module with `device`), no-op gathers, unused names;
- `timm.models.layers`: `drop_path`, `to_2tuple`, `trunc_normal_` (the three it uses; `drop_path` is identity at eval);
- transformers 5 moved `apply_chunking_to_forward`/`prune_linear_layer` to `pytorch_utils`: re-exported where
  `Qformer.py` looks for them.
`tiny_blip2(kind)` builds the release's `Blip2ITM` (student) or `Blip2Critic` with tiny random weights: the release's
`__init__` runs unchanged, with `init_tokenizer`, `init_vision_encoder` and `init_Qformer` replaced by the same code on a
tiny config (theirs download bert-base-uncased and EVA ViT-g).
"""
import importlib.util, sys, types
from functools import partial
from pathlib import Path
import torch, torch.nn as nn

HERE = Path(__file__).parent
FILES = {'lavis.models.eva_vit': 'eva_vit.py', 'lavis.models.blip2_models.Qformer': 'Qformer.py',
         'lavis.models.blip2_models.blip2': 'blip2.py', 'lavis.models.blip2_models.blip2_qformer': 'blip2_qformer.py',
         'lavis.models.blip2_models.blip2_image_text_matching': 'blip2_image_text_matching.py',
         'lavis.models.blip2_models.blip2_critic': 'blip2_critic.py'}

def _module(name, **attrs):
    m = sys.modules.get(name) or types.ModuleType(name)
    m.__dict__.update(attrs); m.__path__ = []
    sys.modules[name] = m
    return m

def _stubs():
    import transformers.modeling_utils as mu, transformers.pytorch_utils as pu
    for k in ('apply_chunking_to_forward', 'prune_linear_layer'): setattr(mu, k, getattr(pu, k))
    mu.find_pruneable_heads_and_indices = lambda *a, **k: (_ for _ in ()).throw(NotImplementedError('pruning'))
    class Registry:
        def register_model(self, name): return lambda cls: cls
    class BaseModel(nn.Module):
        @property
        def device(self): return next(self.parameters()).device
    def trunc_normal_(t, mean=0., std=1., a=-2., b=2.): return nn.init.trunc_normal_(t, mean, std, a, b)
    def drop_path(x, p=0., training=False):
        if p and training: raise NotImplementedError('drop_path in training')
        return x
    _module('lavis'); _module('lavis.common'); _module('lavis.models'); _module('lavis.models.blip2_models')
    _module('lavis.common.registry', registry=Registry())
    _module('lavis.common.dist_utils', download_cached_file=lambda *a, **k: (_ for _ in ()).throw(RuntimeError('offline')))
    _module('lavis.common.utils', is_url=lambda s: str(s).startswith('http'))
    _module('lavis.common.logger', MetricLogger=object)
    _module('lavis.models.base_model', BaseModel=BaseModel, all_gather_with_grad=lambda x: x, concat_all_gather=lambda x: x)
    _module('lavis.models.blip_models'); _module('lavis.models.blip_models.blip_outputs', BlipOutput=dict, BlipOutputFeatures=dict)
    _module('lavis.models.clip_vit', create_clip_vit_L=None)
    _module('timm'); _module('timm.models')
    _module('timm.models.layers', drop_path=drop_path, to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x), trunc_normal_=trunc_normal_)
    _module('timm.models.registry', register_model=lambda f: f)

def _invert_attention_mask(self, mask):    # transformers 4's `ModuleUtilsMixin.invert_attention_mask` (gone in 5)
    ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).to(self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min

def _get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):   # transformers 4's, without head masks
    if head_mask is not None: raise NotImplementedError('head masks')
    return [None] * num_hidden_layers

def load():
    "The release's modules, by their LAVIS names"
    if all(k in sys.modules for k in FILES): return {k: sys.modules[k] for k in FILES}
    _stubs()
    for name, f in FILES.items():
        spec = importlib.util.spec_from_file_location(name, HERE/f)
        m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m)
        if name.endswith('Qformer'):   # transformers 5's `init_weights` needs `post_init` state: the old behaviour, untied
            m.BertPreTrainedModel.init_weights = lambda self: self.apply(self._init_weights)
            for k, f in (('invert_attention_mask', _invert_attention_mask), ('get_head_mask', _get_head_mask)):
                if not hasattr(m.BertPreTrainedModel, k): setattr(m.BertPreTrainedModel, k, f)
    return {k: sys.modules[k] for k in FILES}

TINY = dict(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2.0,
            hidden_size=32, layers=4, heads=2, intermediate=64, num_query_token=8, embed_dim_itc=16, cross_attention_freq=2)

def tiny_blip2(kind='student', tokenizer=None, seed=0, img_size=None, vision_state=None, **kw):
    """The release's `Blip2ITM` (kind 'student') or `Blip2Critic` ('critic'), tiny, every parameter random.
    `vision_state`: an EVA state dict to load into the ViT as `create_eva_vit_g` does (position embeddings interpolated)."""
    mods = load(); c = {**TINY, **kw}; size = img_size or c['img_size']
    eva, qf, b2 = mods['lavis.models.eva_vit'], mods['lavis.models.blip2_models.Qformer'], mods['lavis.models.blip2_models.blip2']
    Base = b2.Blip2Base
    def init_tokenizer(cls, truncation_side='right'): return tokenizer
    def init_vision_encoder(self, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        ve = eva.VisionTransformer(img_size=img_size, patch_size=c['patch_size'], use_mean_pooling=False, embed_dim=c['embed_dim'],
                                   depth=c['depth'], num_heads=c['num_heads'], mlp_ratio=c['mlp_ratio'], qkv_bias=True,
                                   norm_layer=partial(nn.LayerNorm, eps=1e-6))
        if vision_state is not None:
            sd = dict(vision_state); eva.interpolate_pos_embed(ve, sd); ve.load_state_dict(sd, strict=True)
        self.vit_name = model_name
        return ve, b2.LayerNorm(ve.num_features)
    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        cfg = qf.BertConfig(vocab_size=30522, hidden_size=c['hidden_size'], num_hidden_layers=c['layers'], num_attention_heads=c['heads'],
                            intermediate_size=c['intermediate'], max_position_embeddings=512)
        cfg.encoder_width, cfg.add_cross_attention = vision_width, True
        cfg.cross_attention_freq, cfg.query_length = cross_attention_freq, num_query_token
        Q = qf.BertLMHeadModel(config=cfg)
        qt = nn.Parameter(torch.zeros(1, num_query_token, cfg.hidden_size)); qt.data.normal_(mean=0.0, std=cfg.initializer_range)
        return Q, qt
    saved = {k: Base.__dict__.get(k) for k in ('init_tokenizer', 'init_vision_encoder', 'init_Qformer')}
    Base.init_tokenizer, Base.init_Qformer = classmethod(init_tokenizer), classmethod(init_Qformer)
    Base.init_vision_encoder = init_vision_encoder
    torch.manual_seed(seed)
    try:
        if kind == 'student':
            m = mods['lavis.models.blip2_models.blip2_image_text_matching'].Blip2ITM(
                img_size=size, vit_precision='fp32', num_query_token=c['num_query_token'], cross_attention_freq=c['cross_attention_freq'],
                embed_dim=c['embed_dim_itc'], max_txt_len=128)
        else:
            m = mods['lavis.models.blip2_models.blip2_critic'].Blip2Critic(
                img_size=size, vit_precision='fp32', num_query_token=c['num_query_token'], cross_attention_freq=c['cross_attention_freq'],
                max_txt_len=128)
    finally:
        for k, v in saved.items(): setattr(Base, k, v)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():     # every parameter random (LayerNorms at 1/0 and zero biases would hide a wrong mapping)
        for n, p in m.named_parameters():
            if n.startswith('visual_encoder.') and vision_state is not None: continue
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
    return m.eval()

def runner_checkpoint(model, folder):
    """Save `model` as LAVIS's runner does (`RunnerBase._save_checkpoint`: parameters without a gradient deleted, so no
    frozen ViT) and its ViT as `eva_vit_g.pth` holds one (a bare state dict): `(checkpoint path, vit path)`"""
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    grad = {k: p.requires_grad for k, p in model.named_parameters()}
    sd = {k: v for k, v in model.state_dict().items() if grad.get(k, True)}
    torch.save({'model': sd, 'optimizer': {}, 'config': {}, 'scaler': None, 'epoch': 0}, folder/'checkpoint_best.pth')
    torch.save({k[len('visual_encoder.'):]: v for k, v in model.state_dict().items() if k.startswith('visual_encoder.')}, folder/'eva_vit.pth')
    return folder/'checkpoint_best.pth', folder/'eva_vit.pth'

@torch.no_grad()
def student_scores(ref, pixels, texts):
    "The release's own `Blip2ITM.forward`: ITM P(match) and ITC similarity of text i with image i (one pair per call: it does not pad)"
    itm, itc = [], []
    for i, t in enumerate(texts):
        s = {'image': pixels[i:i+1], 'text_input': [t]}
        itm.append(ref(s, match_head='itm').softmax(-1)[0, 1]); itc.append(ref(s, match_head='itc')[0, 0])
    return {'itm': torch.stack(itm), 'itc': torch.stack(itc)}

@torch.no_grad()
def critic_scores(ref, pixels, texts):
    "The release's own `Blip2Critic.forward`: P(class 1) and its qa/r heads averaged over the queries (read with hooks)"
    got, n = {}, len(texts)
    hooks = [getattr(ref, h).register_forward_hook(lambda m, i, o, h=h: got.__setitem__(h, o.mean(1).squeeze(-1))) for h in ('qa_head', 'r_head')]
    try: out = ref({'image': pixels, 'text_input': list(texts), 'label': torch.zeros(n, dtype=torch.long),
                    'qa_label': torch.zeros(n), 'r_label': torch.zeros(n)}, is_train=True)
    finally:
        for h in hooks: h.remove()
    return {'itm': out['prediction'][:, 1], 'qa': got['qa_head'], 'rationale': got['r_head']}
