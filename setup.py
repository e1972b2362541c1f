# nbdev 2's template: everything is read from settings.ini
from configparser import ConfigParser
import setuptools, shlex, shutil
from pathlib import Path
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, "missing expected setting: {}".format(o)
setup_cfg = {o:cfg[o] for o in cfg_keys}

licenses = {'apache2': ('Apache Software License 2.0','OSI Approved :: Apache Software License')}
statuses = ['1 - Planning','2 - Pre-Alpha','3 - Alpha','4 - Beta','5 - Production/Stable','6 - Mature','7 - Inactive']
py_versions = '3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
local_requirements = shlex.split(cfg.get('local_requirements', ''))
ray_requirements = shlex.split(cfg.get('ray_requirements', ''))
min_python = cfg['min_python']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))

class build_py_with_files(build_py):
    "Copy data/ and the notebooks into the built package (lskd/_assets): a wheel runs `lskd run` without a checkout"
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return     # an editable install reads them from the checkout
        dst = Path(self.build_lib)/cfg['lib_path']/'_assets'
        shutil.rmtree(dst, ignore_errors=True)
        skip = shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__', '*.pyc')
        shutil.copytree('data', dst/'data', ignore=skip)
        (dst/'nbs').mkdir(parents=True)
        for nb in sorted(Path(cfg['nbs_path']).glob('*.ipynb')): shutil.copy2(nb, dst/'nbs'/nb.name)

setuptools.setup(
    cmdclass = {'build_py': build_py_with_files},
    name = cfg['lib_name'],
    license = lic[0],
    classifiers = [
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: '+o for o in py_versions[py_versions.index(min_python):]],
    url = cfg['git_url'],
    packages = setuptools.find_packages(include=['lskd', 'lskd.*']),
    include_package_data = True,
    install_requires = requirements,
    extras_require={'dev': dev_requirements, 'local': local_requirements, 'ray': ray_requirements},
    dependency_links = cfg.get('dep_links','').split(),
    python_requires  = '>=' + cfg['min_python'],
    long_description = open('README.md', encoding='utf-8').read(),
    long_description_content_type = 'text/markdown',
    zip_safe = False,
    entry_points = {
        'console_scripts': cfg.get('console_scripts','').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']
    },
    **setup_cfg)
