/** jest for the front-end models: ts-jest, jsdom by default (api.spec runs in node for its fetch). */
module.exports = {
  testEnvironment: 'jsdom',
  testRegex: 'src/__tests__/.*\\.spec\\.tsx?$',
  moduleFileExtensions: ['ts', 'tsx', 'js', 'json'],
  transform: {
    '^.+\\.tsx?$': [
      'ts-jest',
      {
        tsconfig: {
          module: 'commonjs',
          target: 'ES2018',
          jsx: 'react',
          esModuleInterop: true,
          strict: true,
          skipLibCheck: true,
          lib: ['DOM', 'DOM.Iterable', 'ES2018', 'ES2020.Intl'],
          types: ['jest', 'node']
        }
      }
    ]
  },
  // style imports and JupyterLab's ESM-only UI packages are not needed by the models
  moduleNameMapper: {
    '\\.(css|svg)$': '<rootDir>/src/__tests__/stub.js'
  },
  collectCoverageFrom: ['src/**/*.{ts,tsx}', '!src/__tests__/**'],
  testTimeout: 20000
};
